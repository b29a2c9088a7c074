"""Drawing meme text onto images (Pillow): layouts, the font, fitting and output encoding. No HTTP here."""
