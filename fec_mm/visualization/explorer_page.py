"""The page of the cluster explorer (:mod:`.explorer`): HTML, CSS and the
script, inline. ``__TITLE__`` and ``__DATA__`` (the JSON payload) are
filled in by :func:`~.explorer.explorer_html`. The script keeps its state in
``window.__explorer`` (also read by the browser tests)."""

PAGE_TEMPLATE = r'''<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
body { font: 13px/1.35 system-ui, sans-serif; margin: 10px; color: #222; background: #fafafa; }
h1 { font-size: 16px; margin: 0 0 4px 0; }
#meta { color: #555; margin-bottom: 6px; }
#controls { display: flex; flex-wrap: wrap; gap: 4px 14px; align-items: center;
            margin-bottom: 8px; }
#controls label { white-space: nowrap; }
#layout { display: flex; gap: 12px; align-items: flex-start; flex-wrap: wrap; }
canvas { image-rendering: pixelated; display: block; cursor: crosshair;
         background: #000; }
#chain { display: flex; gap: 8px; flex-wrap: wrap; margin-top: 8px; }
#chain figure { margin: 0; border: 2px solid transparent; }
#chain figure.active { border-color: #d62728; }
#chain figcaption { text-align: center; font-size: 12px; }
#panel { min-width: 330px; max-width: 600px; }
table { border-collapse: collapse; margin-bottom: 6px; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #eee; }
tr.active td { background: #ffe9a8; }
#status { color: #a00; min-height: 1.3em; }
#help { color: #555; font-size: 12px; }
#cls { max-width: 24em; }
#help kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 3px; background: #fff; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div id="meta"></div>
<div id="controls">
  <label>View <select id="view"></select></label>
  <label>Stage <select id="stage"></select></label>
  <label>Block <select id="block"></select></label>
  <label>Head <select id="head"></select></label>
  <label>Cluster <input id="cluster" type="number" min="0" step="1" style="width:6em"></label>
  <button id="light">Light cluster</button>
  <label>Colour <select id="paint"></select></label>
  <label id="clsLabel">Class <select id="cls"></select></label>
</div>
<div id="layout">
  <div>
    <canvas id="main"></canvas>
  </div>
  <div id="panel">
    <div id="status"></div>
    <div id="pixel">Point at the image.</div>
    <table id="numbers"><thead></thead><tbody></tbody></table>
    <div id="stageinfo"></div>
    <div id="chain"></div>
    <div id="help">
      <b>Mouse</b>: hover a pixel to see its cluster at every stage (members lit, the rest
      dimmed); click to pin it (click again elsewhere to move the pin).<br>
      <kbd>&uarr;</kbd>/<kbd>&darr;</kbd> next / previous stage (mixer view: block),
      <kbd>&larr;</kbd>/<kbd>&rarr;</kbd> previous / next non-empty cluster,
      <kbd>h</kbd> next head, <kbd>Esc</kbd> unpin.
    </div>
  </div>
</div>
<script id="fec-data" type="application/json">__DATA__</script>
<script>
'use strict';
(function () {
const E = window.__explorer = { ready: false, error: null, readyMs: null, state: null };
const D = JSON.parse(document.getElementById('fec-data').textContent);
const $ = (id) => document.getElementById(id);
const [H, W] = D.image_size, S = D.stride, [R0, C0] = D.stem, N0 = R0 * C0;
const LIT_ALPHA = 0, TINT_ALPHA = 100, DIM = [16, 16, 16, 170];

async function inflate(a) {
  const bin = atob(a.b64), bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
  const buf = await new Response(stream).arrayBuffer();
  const T = { uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array, int32: Int32Array,
              float32: Float32Array }[a.dtype];
  return new T(buf);
}

function hashColor(id, seed) {
  let h = (id + 1) * 2654435761 ^ (seed + 7) * 40503;
  h = Math.imul(h ^ (h >>> 15), 2246822519); h = Math.imul(h ^ (h >>> 13), 3266489917);
  h ^= h >>> 16;
  return [40 + (h & 0xff) % 216, 40 + ((h >>> 8) & 0xff) % 216, 40 + ((h >>> 16) & 0xff) % 216];
}

function diverging(v, limit) {  // red +, blue -, white 0 (symmetric scale)
  const t = Math.max(-1, Math.min(1, limit > 0 ? v / limit : 0));
  return t >= 0 ? [255, Math.round(255 * (1 - t)), Math.round(255 * (1 - t))]
                : [Math.round(255 * (1 + t)), Math.round(255 * (1 + t)), 255];
}

// Stage-s grid id of stem token t (s = 0: the padded stem grid itself).
function stageId(s, t) {
  return s === 0 ? Math.floor(t / C0) * D.stem_grid[1] + (t % C0) : D.stages[s - 1].idsA[t];
}

const layers = {};  // key -> {key, title, lab (stem token -> id), sizes, pieces, cos(t)}
function poolLayer(k) {
  const key = 'stage' + k;
  if (!layers[key]) {
    const st = D.stages[k - 1];
    layers[key] = { key, kind: 'pool', stage: k, title: 'stage ' + k +
                    (k === D.stages.length ? ' (final)' : ''), lab: st.idsA,
                    sizes: st.sizesA, pieces: st.piecesA, cos: (t) => st.cosA[t] };
  }
  return layers[key];
}
function blockLayer(bi, hi) {
  const key = 'block' + bi + '_' + hi;
  if (!layers[key]) {
    const bl = D.blocks[bi], n = bl.grid[0] * bl.grid[1], nc = bl.centers[0] * bl.centers[1];
    const lab = new Int32Array(N0), pt = new Int32Array(N0);
    for (let t = 0; t < N0; t++) {
      const p = stageId(bl.stage, t);
      pt[t] = p; lab[t] = bl.idsA[hi * n + p];
    }
    layers[key] = { key, kind: 'enc', block: bi, head: hi,
                    title: 'block ' + bl.name + ' head ' + bl.heads[hi], lab,
                    sizes: bl.sizesA.subarray(hi * nc, (hi + 1) * nc),
                    pieces: bl.piecesA.subarray(hi * nc, (hi + 1) * nc),
                    cos: (t) => bl.cosA[hi * n + pt[t]] / 32767.5 - 1 };
  }
  return layers[key];
}

const st = E.state = { view: 'pool', stage: 1, block: 0, head: 0, anchor: -1, pinned: false,
                       paint: 'clusters', cls: null, pixel: null };
let img = null;
const views = {};  // name -> {canvas, ctx, overlay, octx, layer()}

function activeLayer() {
  return st.view === 'pool' ? poolLayer(st.stage) : blockLayer(st.block, st.head);
}

function finalLab() { return D.stages[D.stages.length - 1].idsA; }

function classLimit() {
  const c = D.classification, n = c.numFinal;
  let m = 0;
  for (let i = 0; i < n; i++) m = Math.max(m, Math.abs(c.contribA[st.cls * n + i]));
  return m;
}

function colorOf(layer, t, limit) {
  if (st.paint === 'contribution') {
    const c = D.classification;
    return diverging(c.contribA[st.cls * c.numFinal + finalLab()[t]], limit);
  }
  if (st.paint === 'groups') {
    const g = D.groups.groupA[finalLab()[t]];
    return D.groups.colors[g] || [0, 0, 0];
  }
  return hashColor(layer.lab[t], layer.kind === 'pool' ? layer.stage : 100 + layer.block);
}

function paintView(v) {
  const layer = v.layer(), lab = layer.lab, data = v.odata.data;
  const sel = st.anchor >= 0 ? lab[st.anchor] : -1, colour = st.paint !== 'none';
  const limit = st.paint === 'contribution' ? classLimit() : 0;
  const alpha = sel >= 0 ? TINT_ALPHA : 110;
  for (let t = 0, i = 0; t < N0; t++, i += 4) {
    if (sel >= 0 && lab[t] !== sel) {
      data[i] = DIM[0]; data[i + 1] = DIM[1]; data[i + 2] = DIM[2]; data[i + 3] = DIM[3];
    } else if (colour) {
      const c = colorOf(layer, t, limit);
      data[i] = c[0]; data[i + 1] = c[1]; data[i + 2] = c[2]; data[i + 3] = alpha;
    } else {
      data[i] = data[i + 1] = data[i + 2] = 0; data[i + 3] = LIT_ALPHA;
    }
  }
  v.octx.putImageData(v.odata, 0, 0);
  v.ctx.imageSmoothingEnabled = true;
  v.ctx.clearRect(0, 0, v.canvas.width, v.canvas.height);
  v.ctx.drawImage(img, 0, 0, v.canvas.width, v.canvas.height);
  v.ctx.imageSmoothingEnabled = false;
  const f = v.canvas.width / W;
  v.ctx.drawImage(v.overlay, 0, 0, C0 * S * f, R0 * S * f);
}

function makeView(name, width, parent, layerFn) {
  const c = name === 'main' ? $('main') : document.createElement('canvas');
  if (name !== 'main') c.id = 'view-' + name;
  const f = Math.min(1, width / W);
  c.width = Math.max(1, Math.round(W * f)); c.height = Math.max(1, Math.round(H * f));
  const overlay = document.createElement('canvas');
  overlay.width = C0; overlay.height = R0;
  const octx = overlay.getContext('2d', { willReadFrequently: true });
  const v = { name, canvas: c, ctx: c.getContext('2d'), overlay, octx,
              odata: octx.createImageData(C0, R0), layer: layerFn };
  if (parent) parent.appendChild(c);
  c.addEventListener('mousemove', (e) => hover(v, e, false));
  c.addEventListener('click', (e) => hover(v, e, true));
  c.addEventListener('mouseleave', () => { if (!st.pinned) { setAnchor(-1); } });
  views[name] = v;
  return v;
}

function pixelOf(v, e) {
  const r = v.canvas.getBoundingClientRect();
  const x = Math.floor((e.clientX - r.left) * W / r.width);
  const y = Math.floor((e.clientY - r.top) * H / r.height);
  return [Math.min(W - 1, Math.max(0, x)), Math.min(H - 1, Math.max(0, y))];
}

function hover(v, e, click) {
  if (st.pinned && !click) return;
  const [x, y] = pixelOf(v, e);
  st.pixel = [x, y];
  if (click) st.pinned = true;
  setAnchor(Math.floor(y / S) * C0 + Math.floor(x / S));
}

function setAnchor(t) {
  st.anchor = t;
  if (t < 0) { st.pixel = null; st.pinned = false; }
  render();
}

function fmt(x, d) { return Number.isFinite(x) ? x.toFixed(d) : String(x); }

function renderPanel() {
  const head = $('numbers').tHead, body = $('numbers').tBodies[0];
  const cols = ['layer', 'cluster', 'size (px)', 'cos to center', 'pieces'];
  if (D.groups) cols.push('merge group');
  if (D.classification) cols.push('contribution');
  head.innerHTML = '<tr>' + cols.map((c) => '<th>' + c + '</th>').join('') + '</tr>';
  body.innerHTML = '';
  const t = st.anchor;
  $('pixel').textContent = t < 0 ? 'Point at the image.' :
    (st.pixel ? 'pixel (x ' + st.pixel[0] + ', y ' + st.pixel[1] + ')' :
     'first member: stem token ' + t) + ', stem token (' + Math.floor(t / C0) + ', ' +
    (t % C0) + ')' + (st.pinned ? ' [pinned]' : '');
  if (t < 0) return;
  const rows = [];
  for (let k = 1; k <= D.stages.length; k++) rows.push(poolLayer(k));
  if (st.view === 'enc') rows.push(blockLayer(st.block, st.head));
  const active = activeLayer();
  for (const L of rows) {
    const id = L.lab[t], tr = document.createElement('tr');
    tr.dataset.layer = L.key;
    if (L === active) tr.className = 'active';
    const cells = [L.title, id, L.sizes[id], fmt(L.cos(t), 4), L.pieces[id]];
    const isFinal = L.kind === 'pool' && L.stage === D.stages.length;
    if (D.groups) cells.push(isFinal ? D.groups.groupA[id] : '');
    if (D.classification) {
      const c = D.classification;
      cells.push(isFinal ? c.contribA[st.cls * c.numFinal + id].toPrecision(5) : '');
    }
    tr.innerHTML = cells.map((c) => '<td>' + c + '</td>').join('');
    body.appendChild(tr);
  }
}

function renderStageInfo() {
  const L = activeLayer();
  if (L.kind === 'pool') {
    const s = D.stages[L.stage - 1].stats;
    $('stageinfo').textContent = 'stage ' + L.stage + ': ' + s.non_empty + ' of ' + s.clusters +
      ' clusters non-empty, effective ' + fmt(s.effective, 1) + ', ' + fmt(s.fragmentation, 2) +
      ' pieces per cluster, joins own 2x2 cell ' + fmt(100 * s.own_cell_share, 0) + '%';
  } else {
    const bl = D.blocks[L.block];
    $('stageinfo').textContent = 'block ' + bl.name + ' (stage ' + bl.stage + '), head ' +
      bl.heads[L.head] + ': ' + bl.centers[0] + 'x' + bl.centers[1] + ' centers, fold ' +
      bl.fold;
  }
  if (D.classification) {
    const c = D.classification;
    $('stageinfo').textContent += '; class ' + c.names[st.cls] + ': logit ' +
      c.logitsA[st.cls].toPrecision(5) + ' = sum of the final clusters\' contributions';
  }
}

function render() {
  for (const v of Object.values(views)) paintView(v);
  for (const fig of $('chain').children) {
    fig.classList.toggle('active', st.view === 'pool' && fig.dataset.stage == st.stage);
  }
  renderPanel();
  renderStageInfo();
  $('stage').value = String(st.stage);
  $('block').value = String(st.block);
  $('head').value = String(st.head);
  $('view').value = st.view;
  $('paint').value = st.paint;
  if (D.classification) $('cls').value = String(st.cls);
  $('stage').disabled = st.view !== 'pool';
  $('block').disabled = $('head').disabled = st.view !== 'enc';
}

function status(msg) { $('status').textContent = msg || ''; }

function lightCluster(id) {
  const L = activeLayer();
  if (!(id >= 0 && id < L.sizes.length)) {
    status('no cluster ' + id + ' in ' + L.title + ' (ids 0..' + (L.sizes.length - 1) + ')');
    return false;
  }
  const t = L.lab.indexOf(id);
  if (t < 0) { status('cluster ' + id + ' of ' + L.title + ' has no pixel'); return false; }
  status('');
  st.pixel = null; st.pinned = true; setAnchor(t);
  return true;
}

function stepCluster(dir) {
  const L = activeLayer(), n = L.sizes.length;
  let id = st.anchor >= 0 ? L.lab[st.anchor] : (dir > 0 ? -1 : n);
  for (let i = 0; i < n; i++) {
    id = (id + dir + n) % n;
    if (L.sizes[id] > 0) { $('cluster').value = id; lightCluster(id); return; }
  }
}

function option(sel, value, text) {
  const o = document.createElement('option'); o.value = String(value); o.textContent = text;
  sel.appendChild(o);
}

async function init() {
  for (const s of D.stages) {
    [s.idsA, s.cosA, s.sizesA, s.piecesA] = await Promise.all(
      [s.ids, s.cos, s.sizes, s.pieces].map(inflate));
  }
  for (const b of D.blocks) {
    [b.idsA, b.cosA, b.sizesA, b.piecesA] = await Promise.all(
      [b.ids, b.cos, b.sizes, b.pieces].map(inflate));
  }
  if (D.groups) D.groups.groupA = await inflate(D.groups.group_of);
  if (D.classification) {
    const c = D.classification;
    c.contribA = await inflate(c.contributions);
    c.logitsA = await inflate(c.logits);
    c.numFinal = c.contributions.shape[1];
    st.cls = c.target;
  }
  img = new Image();
  img.src = 'data:image/png;base64,' + D.image;
  await img.decode();

  const m = D.meta, bits = [W + 'x' + H + ' px'];
  for (const k of ['image', 'config', 'checkpoint', 'arch']) if (m[k]) bits.push(k + ': ' + m[k]);
  $('meta').textContent = bits.join(' | ');
  option($('view'), 'pool', 'pooling stages');
  if (D.blocks.length) option($('view'), 'enc', 'mixer (block, head)');
  D.stages.forEach((s) => option($('stage'), s.stage, s.stage +
    (s.stage === D.stages.length ? ' (final)' : '')));
  D.blocks.forEach((b, i) => option($('block'), i, b.name));
  const fillHeads = () => {
    $('head').innerHTML = '';
    if (D.blocks.length) D.blocks[st.block].heads.forEach((h, i) => option($('head'), i, h));
  };
  fillHeads();
  option($('paint'), 'clusters', 'clusters');
  option($('paint'), 'none', 'photograph');
  if (D.groups) option($('paint'), 'groups', 'merge groups (' + D.groups.k + ')');
  if (D.classification) {
    const c = D.classification;
    option($('paint'), 'contribution', 'contribution to class');
    const order = Array.from(c.logitsA.keys()).sort((a, b) => c.logitsA[b] - c.logitsA[a]);
    for (const i of order) option($('cls'), i, c.names[i] + ' (' + c.logitsA[i].toFixed(3) + ')');
  } else {
    $('clsLabel').style.display = 'none';
  }

  // Full resolution; shown at most 1000 px wide, small images enlarged up to 2x.
  makeView('main', W, null, () => activeLayer());
  const avail = Math.max(320, Math.min(1000, window.innerWidth - 640));
  $('main').style.width = Math.round(W * Math.min(2, avail / W)) + 'px';
  for (const s of D.stages) {
    const fig = document.createElement('figure');
    fig.dataset.stage = s.stage;
    $('chain').appendChild(fig);
    makeView('stage' + s.stage, 180, fig, () => poolLayer(s.stage));
    const cap = document.createElement('figcaption');
    cap.textContent = 'stage ' + s.stage + (s.stage === D.stages.length ? ' (final)' : '');
    fig.appendChild(cap);
  }

  $('view').onchange = () => { st.view = $('view').value; render(); };
  $('stage').onchange = () => { st.view = 'pool'; st.stage = +$('stage').value; render(); };
  $('block').onchange = () => { st.block = +$('block').value; st.head = 0; fillHeads();
                                render(); };
  $('head').onchange = () => { st.head = +$('head').value; render(); };
  $('paint').onchange = () => { st.paint = $('paint').value; render(); };
  $('cls').onchange = () => { st.cls = +$('cls').value; st.paint = 'contribution'; render(); };
  $('light').onclick = () => lightCluster(parseInt($('cluster').value, 10));
  $('cluster').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') lightCluster(parseInt($('cluster').value, 10));
  });
  document.addEventListener('keydown', (e) => {
    if (e.target && e.target.tagName === 'INPUT') return;
    let handled = true;
    if (e.key === 'ArrowUp' || e.key === 'ArrowDown') {
      const d = e.key === 'ArrowUp' ? 1 : -1;
      if (st.view === 'pool') st.stage = Math.min(D.stages.length, Math.max(1, st.stage + d));
      else { st.block = Math.min(D.blocks.length - 1, Math.max(0, st.block + d)); st.head = 0;
             fillHeads(); }
      render();
    } else if (e.key === 'ArrowLeft' || e.key === 'ArrowRight') {
      stepCluster(e.key === 'ArrowRight' ? 1 : -1);
    } else if (e.key === 'h' && st.view === 'enc') {
      st.head = (st.head + 1) % D.blocks[st.block].heads.length; render();
    } else if (e.key === 'Escape') {
      setAnchor(-1);
    } else handled = false;
    if (handled) e.preventDefault();
  });
  render();
}

// For tests and scripting: the stem tokens lit on a view (read back from its
// painted overlay: members of the selected cluster keep a light overlay,
// the rest is dimmed), and the panel's rows.
E.lit = (name) => {
  const v = views[name];
  if (!v || st.anchor < 0) return null;
  const a = v.octx.getImageData(0, 0, C0, R0).data, out = [];
  for (let t = 0; t < N0; t++) if (a[4 * t + 3] < 128) out.push(t);
  return out;
};
E.overlayRGBA = (name, t) => Array.from(views[name].octx.getImageData(t % C0,
  Math.floor(t / C0), 1, 1).data);
E.panel = () => Array.from($('numbers').tBodies[0].rows).map((r) => ({
  layer: r.dataset.layer, active: r.className === 'active',
  cells: Array.from(r.cells).map((c) => c.textContent) }));
E.stem = [R0, C0];
E.views = () => Object.keys(views);

init().then(() => { E.ready = true; E.readyMs = performance.now(); },
            (err) => { E.error = String(err && err.stack || err); status('error: ' + err);
                       throw err; });
})();
</script>
</body>
</html>
'''
