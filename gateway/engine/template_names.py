"""How a template name is matched: case, spaces, hyphens and underscores do not matter."""


def template_key(name: str) -> str:
    return "-".join(name.lower().replace("_", " ").replace("-", " ").split())
