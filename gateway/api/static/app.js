// Memefly's page: pick an image (or a template), ask POST /memes for five captions, draw each
// with POST /render, show them. Plain browser JavaScript: no build step, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_UPLOAD_SIDE = 1600; // larger pictures are scaled down in the browser before upload
const LAYOUT_MIN_PROBABILITY = 0.5; // as gateway/rendering/layout.py: a recognised template lends its layout

const state = {
  upload: null, // Blob to send as the image
  template: null, // or a template name
  memes: [], // captions shown, excluded when asking for five more
  objectUrls: [],
  busy: false,
};

const STATUS_TEXT = {
  400: "That image could not be read",
  404: "Not found",
  413: "That image is too large",
  415: "That file is not an image we can read",
  422: "The request was not accepted",
  499: "The request was cancelled",
  502: "The model server failed",
  503: "The models are not ready yet; try again in a few seconds",
  504: "The server took too long",
};

class ApiError extends Error {}

async function apiError(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = Array.isArray(body.detail)
      ? body.detail.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ")
      : String(body.detail ?? "");
  } catch (_) {
    detail = response.statusText;
  }
  const what = STATUS_TEXT[response.status] || `The server answered ${response.status}`;
  return new ApiError(detail ? `${what} (${response.status}): ${detail}` : `${what} (${response.status}).`);
}

async function call(path, form) {
  let response;
  try {
    response = await fetch(path, { method: "POST", body: form });
  } catch (_) {
    throw new ApiError("Could not reach the Memefly server. Is it running?");
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setBusy(busy) {
  state.busy = busy;
  $("spinner").hidden = !busy;
  const ready = Boolean(state.upload || state.template);
  $("generate").disabled = busy || !ready;
  $("regenerate").disabled = busy || !ready || state.memes.length === 0;
}

// ---- choosing what to caption ---------------------------------------------------------
async function shrink(file) {
  // Large photos go up scaled down; anything the browser cannot decode goes up as is, so the
  // server's own message says what is wrong with it.
  try {
    const bitmap = await createImageBitmap(file);
    const scale = MAX_UPLOAD_SIDE / Math.max(bitmap.width, bitmap.height);
    if (scale >= 1) return file;
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    return await new Promise((resolve) => canvas.toBlob((blob) => resolve(blob || file), "image/jpeg", 0.92));
  } catch (_) {
    return file;
  }
}

async function chooseFile(file) {
  if (!file) return;
  state.upload = await shrink(file);
  state.template = null;
  state.memes = [];
  selectTemplateButton(null);
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").textContent = file.name;
  await generate(false);
}

function chooseTemplate(name) {
  state.template = name;
  state.upload = null;
  state.memes = [];
  selectTemplateButton(name);
  $("preview").hidden = true;
  $("drop-text").textContent = `Template: ${name.replaceAll("-", " ")}`;
  generate(false);
}

function selectTemplateButton(name) {
  for (const button of $("templates").children) {
    button.setAttribute("aria-selected", String(button.dataset.name === name));
  }
}

async function loadTemplates() {
  let templates = [];
  try {
    const response = await fetch("/templates");
    if (!response.ok) throw await apiError(response);
    templates = (await response.json()).templates;
  } catch (error) {
    $("templates").textContent = error.message;
    return;
  }
  for (const template of templates) {
    const button = document.createElement("button");
    button.type = "button";
    button.role = "option";
    button.dataset.name = template.name;
    if (template.image) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = "";
      img.src = `${template.image}?size=160`;
      button.append(img);
    }
    button.append(template.name.replaceAll("-", " "));
    button.addEventListener("click", () => chooseTemplate(template.name));
    $("templates").append(button);
  }
}

// ---- generating and drawing -----------------------------------------------------------
// What to caption, fixed when a request starts: picking another image meanwhile does not
// mix the two (the new choice gets its own request when this one ends).
function currentSource() {
  return { upload: state.upload, template: state.template };
}

function sameSource(a, b) {
  return a.upload === b.upload && a.template === b.template;
}

function appendSource(form, source) {
  if (source.upload) form.append("image", source.upload, "image");
  else form.append("template", source.template);
}

function memeRequest(source, more) {
  const form = new FormData();
  appendSource(form, source);
  // The slider starts at the API's default temperature: then the API's defaults apply
  // (sampled candidates, the best distinct ones). 0 asks for beam search: the five likeliest.
  const creativity = $("creativity");
  const value = Number(creativity.value);
  if (value === 0) form.append("num_beams", "5");
  else if (creativity.value !== creativity.defaultValue) form.append("temperature", String(value));
  form.append("num_return_sequences", "5");
  form.append("safe", String($("safe").checked));
  // The API takes up to 100 captions to exclude: the latest 50 are plenty.
  if (more) for (const meme of state.memes.slice(-50)) form.append("exclude", meme.text);
  return form;
}

async function renderMeme(source, meme, layout) {
  const form = new FormData();
  appendSource(form, source);
  for (const box of meme.boxes) form.append("boxes", box);
  if (layout) form.append("layout", layout);
  form.append("format", "png");
  form.append("max_size", "1024");
  const response = await call("/render", form);
  return await response.blob();
}

async function generate(more) {
  if (!(state.upload || state.template)) return;
  if (state.busy) return; // a new choice meanwhile gets its turn when this request ends (below)
  const source = currentSource();
  showError("");
  setBusy(true);
  try {
    const body = await (await call("/memes", memeRequest(source, more))).json();
    const [best] = body.templates;
    const layout = source.template || (best && best.probability >= LAYOUT_MIN_PROBABILITY ? best.name : null);
    const images = await Promise.all(body.memes.map((meme) => renderMeme(source, meme, layout)));
    if (sameSource(source, currentSource())) {
      showGuess(body.template, body.templates);
      showMemes(body.memes, images);
      state.memes = more ? state.memes.concat(body.memes) : body.memes;
    }
  } catch (error) {
    if (sameSource(source, currentSource())) {
      showError(error instanceof ApiError ? error.message : `Something went wrong: ${error}`);
    }
  } finally {
    setBusy(false);
    if (!sameSource(source, currentSource())) generate(false);
  }
}

function showGuess(match, templates) {
  const guess = $("guess");
  if (state.template || !templates.length) {
    guess.hidden = true;
    return;
  }
  const named = (t) => t.name.replaceAll("-", " ");
  if (match.known === false) {
    guess.textContent = `Not a known template — here are memes in the style of ${templates.map(named).join(", ")}; ` +
      "or pick a template below.";
    guess.classList.add("unknown");
  } else {
    guess.textContent = `Looks like ${named(match)} (${Math.round(match.probability * 100)}%)`;
    guess.classList.remove("unknown");
  }
  guess.hidden = false;
}

function showMemes(memes, images) {
  state.objectUrls.forEach((url) => URL.revokeObjectURL(url));
  state.objectUrls = [];
  const list = $("memes");
  list.replaceChildren();
  memes.forEach((meme, i) => {
    const url = URL.createObjectURL(images[i]);
    state.objectUrls.push(url);
    const figure = document.createElement("figure");
    figure.className = "meme";
    const img = document.createElement("img");
    img.src = url;
    img.alt = meme.boxes.join(" / ");
    const caption = document.createElement("figcaption");
    const text = document.createElement("span");
    text.textContent = meme.boxes.join(" / ");
    const download = document.createElement("a");
    download.href = url;
    download.download = `meme-${meme.rank}.png`;
    download.textContent = "Download";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.textContent = "Copy";
    copy.addEventListener("click", () => copyImage(images[i], copy));
    caption.append(text, download, copy);
    figure.append(img, caption);
    list.append(figure);
  });
}

async function copyImage(blob, button) {
  try {
    await navigator.clipboard.write([new ClipboardItem({ [blob.type]: blob })]);
    button.textContent = "Copied";
  } catch (_) {
    showError("This browser would not copy the image: use Download instead.");
  }
}

// ---- wiring ---------------------------------------------------------------------------
function describeCreativity() {
  const value = Number($("creativity").value);
  const text = value === 0 ? "0 (the five likeliest)" : value.toFixed(1);
  $("creativity-value").textContent = value === Number($("creativity").defaultValue) ? `${text} (default)` : text;
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => chooseFile(event.target.files[0]));
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    chooseFile(event.dataTransfer.files[0]);
  });
  $("filter").addEventListener("input", (event) => {
    const words = event.target.value.toLowerCase();
    for (const button of $("templates").children) {
      button.hidden = !button.dataset.name.toLowerCase().replaceAll("-", " ").includes(words);
    }
  });
  $("creativity").addEventListener("input", describeCreativity);
  $("generate").addEventListener("click", () => generate(false));
  $("regenerate").addEventListener("click", () => generate(true));
  describeCreativity();
  setBusy(false);
  loadTemplates();
});
