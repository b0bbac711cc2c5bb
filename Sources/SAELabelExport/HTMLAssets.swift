/// The static shell of the html catalog. No data is ever interpolated into these: the page reads the
/// data files at run time and builds its DOM with textContent and setAttribute only.
enum HTMLAssets {
    static let indexHTML = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>saelabel catalog</title>
<link rel="stylesheet" href="style.css">
</head>
<body data-view="loading">
<header>
  <h1><a href="#" id="home">saelabel catalog</a></h1>
  <p id="meta" class="muted"></p>
</header>
<section id="controls" hidden>
  <label>Search labels <input type="search" id="q" placeholder="text or feature number" autocomplete="off"></label>
  <label>Min simulation <input type="number" id="min" step="0.05" min="-1" max="1" placeholder="any"></label>
  <label>Status <select id="status"><option value="">all</option></select></label>
  <span id="count" class="muted"></span>
  <span class="pager"><button type="button" id="prev">&larr; Prev</button> <span id="pageinfo"></span> <button type="button" id="next">Next &rarr;</button></span>
</section>
<main id="content"><p class="muted">Loading&hellip;</p></main>
<noscript><p>This catalog needs JavaScript to show the features.</p></noscript>
<script src="app.js"></script>
</body>
</html>

"""#

    static let styleCSS = #"""
:root { --fg: #1d2330; --muted: #6b7280; --line: #e5e7eb; --accent: #2563eb; --bg: #ffffff; --head: #f8fafc; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; padding: 0 24px 48px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; padding: 16px 0 8px; border-bottom: 1px solid var(--line); }
h1 { font-size: 20px; margin: 0; }
h1 a { color: inherit; text-decoration: none; }
h2 { font-size: 18px; margin: 18px 0 6px; }
h3 { font-size: 15px; margin: 22px 0 8px; }
.muted { color: var(--muted); }
a { color: var(--accent); }
#controls { display: flex; flex-wrap: wrap; align-items: center; gap: 14px; padding: 12px 0; }
#controls label { display: flex; align-items: center; gap: 6px; color: var(--muted); }
#controls input, #controls select { font: inherit; padding: 4px 8px; border: 1px solid #cbd5e1; border-radius: 6px; }
#q { width: 240px; }
#min { width: 80px; }
.pager { margin-left: auto; display: flex; align-items: center; gap: 8px; }
button { font: inherit; padding: 3px 10px; border: 1px solid #cbd5e1; border-radius: 6px; background: #fff; cursor: pointer; }
button:disabled { opacity: .4; cursor: default; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--head); font-weight: 600; position: sticky; top: 0; cursor: pointer; user-select: none; white-space: nowrap; }
th.sorted::after { content: " \25BE"; }
th.sorted.asc::after { content: " \25B4"; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover { background: #f1f5f9; cursor: pointer; }
td.label { max-width: 560px; }
.score { display: inline-block; min-width: 48px; padding: 1px 6px; border-radius: 4px; text-align: right; }
.status { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; background: #e5e7eb; }
.status-scored { background: #dcfce7; color: #166534; }
.status-explained { background: #dbeafe; color: #1e40af; }
.status-failed { background: #fee2e2; color: #991b1b; }
.status-dead, .status-sparse { background: #f3f4f6; color: #6b7280; }
.label-text { font-size: 18px; margin: 6px 0 12px; }
.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 8px 0; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
.window { display: grid; grid-template-columns: 90px 1fr; gap: 2px 8px; padding: 6px 0; border-bottom: 1px solid var(--line); }
.window .tag { color: var(--muted); font-size: 12px; padding-top: 2px; }
.tokens { font: 13px/1.9 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-word; }
.tok { white-space: pre; border-radius: 2px; padding: 1px 0; }
.legend { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: middle; margin: 0 4px 0 12px; }
svg.hist rect { fill: #f59e0b; }
svg.hist text { font-size: 11px; fill: var(--muted); }
.error { color: #991b1b; }
"""#

    static let appJS = #"""
(function () {
  'use strict';
  // Every piece of data reaches the DOM through textContent or setAttribute, never as markup.
  var PAGE = 100;
  var COLS = [
    { key: 'feature', i: 0, title: 'Feature', num: true },
    { key: 'status', i: 1, title: 'Status' },
    { key: 'label', i: 2, title: 'Label' },
    { key: 'simulation', i: 3, title: 'Simulation', num: true, score: true },
    { key: 'detection', i: 4, title: 'Detection', num: true, score: true },
    { key: 'fuzzing', i: 5, title: 'Fuzzing', num: true, score: true },
    { key: 'frequency', i: 6, title: 'Frequency', num: true },
    { key: 'max', i: 7, title: 'Max act.', num: true }
  ];
  // rows: every summary row once all index parts (and the prebuilt orders) are in; until then
  // `partial` holds the first part to arrive, so the page paints before a 131k-feature index has
  // loaded. The search index is built once from the rows: lower-cased labels, and one sorted order
  // per column and direction (the numeric columns' orders come prebuilt from the export), so a
  // keystroke only scans; a query that extends the previous one scans only its matches.
  // failedParts: index parts that did not load even on a second request; the index is built from the
  // others and the page says which are missing. ordersFailed: sorts are then built in the page.
  var S = { meta: null, parts: {}, partsLoaded: 0, rows: null, partial: null, byFeature: {}, chunks: {}, loading: {},
            chunkFailed: {}, failedParts: [], restRequested: false, ordersFailed: false,
            lastIndexHash: '', lower: null, orders: {}, prebuilt: null, last: null };

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svgEl(tag, attrs) {
    var e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (var k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function pad(n) { var s = String(n); while (s.length < 4) s = '0' + s; return s; }
  // A data file that fails to load is requested once more (a folder still being copied, a server that
  // dropped one request); if that fails too, `failed` decides what the page can still show.
  function loadScript(src, failed) {
    var tries = 0;
    (function attempt() {
      var s = document.createElement('script');
      s.src = src;
      s.onerror = function () {
        if (s.parentNode) s.parentNode.removeChild(s);
        if (++tries < 2) { setTimeout(attempt, 250); return; }
        if (failed) failed(); else fail(cannotLoad(src) + ' Reload the page once it is.');
      };
      document.head.appendChild(s);
    })();
  }
  function cannotLoad(src) {
    return 'Could not load ' + src + ' from the catalog folder. Check that the folder was copied completely, or export it '
      + 'again (saelabel export --format html).';
  }
  function fail(message) {
    var c = $('content'); clear(c); c.appendChild(el('p', 'error', message));
    document.body.setAttribute('data-view', 'error');
  }
  function fmtScore(v) { return v === null || v === undefined ? '—' : v.toFixed(3); }
  function fmtFreq(v) {
    if (v === null || v === undefined) return '—';
    if (v === 0) return '0';
    return v < 0.001 ? v.toExponential(2) : v.toFixed(4);
  }
  function fmtNum(v, digits) { return v === null || v === undefined ? '—' : Number(v).toFixed(digits); }
  function scoreColor(v) {
    var t = Math.max(0, Math.min(1, v));
    return 'hsl(' + Math.round(t * 120) + ', 70%, 88%)';
  }
  function scoreSpan(v) {
    var s = el('span', 'score', fmtScore(v));
    if (v !== null && v !== undefined) s.style.backgroundColor = scoreColor(v);
    return s;
  }
  function statusSpan(status) { return el('span', 'status status-' + String(status).replace(/[^a-z]/g, ''), status); }

  // ---- URL state: ?key=value and #key=value (the hash wins) ----
  function parseParams(text) {
    var out = {};
    text.replace(/^[?#]/, '').split('&').forEach(function (part) {
      if (!part) return;
      var eq = part.indexOf('=');
      var k = decodeURIComponent((eq < 0 ? part : part.slice(0, eq)).replace(/\+/g, ' '));
      var v = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1).replace(/\+/g, ' '));
      out[k] = v;
    });
    return out;
  }
  function params() {
    var p = parseParams(location.search), h = parseParams(location.hash);
    for (var k in h) p[k] = h[k];
    return p;
  }
  function hashFor(p) {
    var parts = [];
    ['q', 'min', 'status', 'sort', 'dir', 'page'].forEach(function (k) {
      if (p[k] !== undefined && p[k] !== '') parts.push(k + '=' + encodeURIComponent(p[k]));
    });
    return '#' + parts.join('&');
  }
  function update(changes) {
    var p = params(); delete p.feature;
    for (var k in changes) p[k] = changes[k];
    var target = hashFor(p);
    if (target === location.hash || (target === '#' && !location.hash)) return;
    history.replaceState(null, '', target);
    render();
  }

  // ---- data callbacks ----
  window.__catalog_meta = function (meta) {
    S.meta = meta;
    document.title = 'saelabel — ' + (meta.sae || 'catalog');
    var bits = [];
    if (meta.sae) bits.push(meta.sae);
    if (meta.hook) bits.push(meta.hook);
    if (meta.model) bits.push(meta.model);
    var counts = Object.keys(meta.statuses || {}).map(function (k) { return meta.statuses[k] + ' ' + k; });
    $('meta').textContent = bits.join(' · ') + ' — ' + meta.features + ' features' + (counts.length ? ' (' + counts.join(', ') + ')' : '');
    var select = $('status');
    Object.keys(meta.statuses || {}).forEach(function (k) { var o = el('option', null, k); o.value = k; select.appendChild(o); });
    if (meta.indexChunks === 0) { S.rows = []; render(); return; }
    // Only the first index part at first: Chromium reads file:// scripts requested together side by
    // side, so with all 14 parts of a 131k catalog requested at once the first one finished only
    // when most of the index had been read (first paint 1.3 s; 32k: 309 ms, 125-190 ms this way).
    loadScript('data/index-0000.js', function () { indexPartFailed(0); });
  };
  // The other parts and the prebuilt orders, requested once: after the first part has painted, or
  // when it failed to load (the rest can still be shown).
  function requestRest() {
    if (S.restRequested) return;
    S.restRequested = true;
    for (var i = 1; i < S.meta.indexChunks; i++) loadScript('data/index-' + pad(i) + '.js', indexPartFailed.bind(null, i));
    if (S.meta.orders) loadScript('data/orders.js', function () { S.ordersFailed = true; indexComplete(); });
  }
  function indexPartFailed(n) {
    S.failedParts.push(n);
    requestRest();
    indexComplete();
  }
  window.__catalog_index = function (n, rows) {
    S.parts[n] = rows; S.partsLoaded++;
    rows.forEach(function (r) { S.byFeature[r[0]] = r; });
    if (!S.partial && !indexReady()) { S.partial = rows; render(); }
    // The other parts and the prebuilt orders (megabytes at 131k features) are requested once the
    // first rows are painted, all together: they no longer compete with the first paint.
    requestRest();
    indexComplete();
  };
  // Row positions of the whole index by each numeric column, highest first, nulls last, ties by feature.
  window.__catalog_orders = function (orders) {
    S.prebuilt = orders;
    indexComplete();
  };
  // Every part and the orders have either arrived or failed twice. With a part missing the prebuilt
  // orders no longer match the rows (order() then sorts in the page).
  function indexReady() {
    return S.partsLoaded + S.failedParts.length === S.meta.indexChunks && (!S.meta.orders || !!S.prebuilt || S.ordersFailed);
  }
  function indexComplete() {
    if (S.rows || !indexReady()) return;
    var all = [];
    for (var i = 0; i < S.meta.indexChunks; i++) if (S.parts[i]) Array.prototype.push.apply(all, S.parts[i]);
    S.parts = null; S.partial = null; S.rows = all;
    S.lower = all.map(function (r) { return (r[2] || '').toLowerCase(); });
    S.orders = {}; S.last = null;
    mark('data-loaded-ms');
    render();
  }
  window.__catalog_chunk = function (n, features) {
    var map = {};
    features.forEach(function (f) { map[f.feature] = f; });
    S.chunks[n] = map; delete S.loading[n];
    render();
  };

  function mark(name) {
    if (!document.body.hasAttribute(name)) document.body.setAttribute(name, performance.now().toFixed(0));
  }

  // ---- index view ----
  function compareBy(rows, col, dir) {
    return function (ia, ib) {
      var a = rows[ia], b = rows[ib], x = a[col.i], y = b[col.i];
      if (x === null || x === undefined) return (y === null || y === undefined) ? a[0] - b[0] : 1;
      if (y === null || y === undefined) return -1;
      if (x < y) return -dir;
      if (x > y) return dir;
      return a[0] - b[0];
    };
  }
  // Row positions in the order of one column and direction; built once per order while loaded.
  // The rows arrive in feature order, and the numeric columns' descending orders come prebuilt.
  function order(rows, col, dir) {
    var key = col.key + dir;
    if (rows === S.rows && S.orders[key]) return S.orders[key];
    var positions, prebuilt = rows === S.rows && S.prebuilt && S.prebuilt[col.key];
    if (col.key === 'feature' && dir > 0 && inFeatureOrder(rows)) {
      positions = rows.map(function (_, i) { return i; });
    } else if (prebuilt && prebuilt.length === rows.length) {
      positions = dir < 0 ? prebuilt : ascendingFrom(rows, col.i, prebuilt);
    } else {
      positions = rows.map(function (_, i) { return i; });
      positions.sort(compareBy(rows, col, dir));
    }
    if (rows === S.rows) S.orders[key] = positions;
    return positions;
  }
  function inFeatureOrder(rows) {
    for (var i = 1; i < rows.length; i++) if (rows[i - 1][0] >= rows[i][0]) return false;
    return true;
  }
  // The ascending order from the descending one: runs of equal values in reverse, each run kept in
  // feature order, then the nulls (last in both directions), as compareBy orders them.
  function ascendingFrom(rows, i, desc) {
    var nonNull = 0;
    while (nonNull < desc.length && rows[desc[nonNull]][i] !== null && rows[desc[nonNull]][i] !== undefined) nonNull++;
    var out = [], end = nonNull;
    while (end > 0) {
      var start = end - 1, v = rows[desc[start]][i];
      while (start > 0 && rows[desc[start - 1]][i] === v) start--;
      for (var k = start; k < end; k++) out.push(desc[k]);
      end = start;
    }
    for (var n = nonNull; n < desc.length; n++) out.push(desc[n]);
    return out;
  }
  function filtered(p) {
    var rows = S.rows || S.partial;
    var q = (p.q || '').trim().toLowerCase();
    var min = p.min !== undefined && p.min !== '' ? Number(p.min) : null;
    if (min !== null && isNaN(min)) min = null;
    var status = p.status || '';
    var col = COLS.filter(function (c) { return c.key === p.sort; })[0] || COLS[0];
    var dir = p.dir === 'desc' ? -1 : 1;
    var key = [status, min, col.key, dir].join('\u0000');
    // A query that extends the previous one (typing on) only needs to look at its matches; not when
    // it could be a feature number, which matches by equality rather than as a substring.
    var candidates = S.last && S.last.rows === rows && S.last.key === key && q.indexOf(S.last.q) === 0 && /\D/.test(q)
      ? S.last.positions : order(rows, col, dir);
    // The feature whose number is written exactly as the query (no String per row).
    var number = /^(0|[1-9][0-9]*)$/.test(q) ? Number(q) : -1;
    var lower = rows === S.rows ? S.lower : null;
    var positions = [];
    for (var k = 0; k < candidates.length; k++) {
      var i = candidates[k], r = rows[i];
      if (status && r[1] !== status) continue;
      if (min !== null && (r[3] === null || r[3] < min)) continue;
      if (q && r[0] !== number && (lower ? lower[i] : (r[2] || '').toLowerCase()).indexOf(q) < 0) continue;
      positions.push(i);
    }
    S.last = { rows: rows, key: key, q: q, positions: positions };
    return { positions: positions, all: rows, col: col, dir: dir };
  }

  function renderIndex(p) {
    document.body.setAttribute('data-view', 'index');
    document.body.removeAttribute('data-feature');
    S.lastIndexHash = location.hash;
    $('controls').hidden = false;
    var active = document.activeElement;
    if (active !== $('q')) $('q').value = p.q || '';
    if (active !== $('min')) $('min').value = p.min || '';
    $('status').value = p.status || '';
    var f = filtered(p), matches = f.positions.length;
    var pages = Math.max(1, Math.ceil(matches / PAGE));
    var page = Math.min(pages, Math.max(1, parseInt(p.page || '1', 10) || 1));
    var start = (page - 1) * PAGE;
    var slice = f.positions.slice(start, start + PAGE).map(function (i) { return f.all[i]; });
    document.body.setAttribute('data-rows', String(matches));
    document.body.setAttribute('data-complete', S.rows ? '1' : '0');
    $('count').textContent = matches + ' of ' + f.all.length + ' features' +
      (S.rows ? '' : ' (loading ' + S.partsLoaded + ' of ' + S.meta.indexChunks + ' index parts\u2026)');
    $('pageinfo').textContent = matches ? (start + 1) + '–' + (start + slice.length) + ' · page ' + page + ' of ' + pages : 'no matches';
    $('prev').disabled = page <= 1; $('next').disabled = page >= pages;
    $('prev').onclick = function () { update({ page: String(page - 1) }); };
    $('next').onclick = function () { update({ page: String(page + 1) }); };

    var table = el('table', 'features'), thead = el('thead'), tr = el('tr');
    COLS.forEach(function (c) {
      var th = el('th', c.num ? 'num' : '', c.title);
      if (c === f.col) { th.classList.add('sorted'); if (f.dir > 0) th.classList.add('asc'); }
      th.onclick = function () {
        var same = c === f.col;
        var dir = same ? (f.dir > 0 ? 'desc' : 'asc') : (c.score || c.key === 'frequency' || c.key === 'max' ? 'desc' : 'asc');
        update({ sort: c.key, dir: dir, page: '' });
      };
      tr.appendChild(th);
    });
    thead.appendChild(tr); table.appendChild(thead);
    var tbody = el('tbody');
    slice.forEach(function (r) {
      var row = el('tr');
      row.setAttribute('data-feature', String(r[0]));
      var a = el('a', null, String(r[0])); a.setAttribute('href', '#feature=' + Number(r[0]));
      var td = el('td', 'num'); td.appendChild(a); row.appendChild(td);
      td = el('td'); td.appendChild(statusSpan(r[1])); row.appendChild(td);
      row.appendChild(el('td', 'label' + (r[2] === null ? ' muted' : ''), r[2] === null ? '(no label)' : r[2]));
      [3, 4, 5].forEach(function (i) { var c = el('td', 'num'); c.appendChild(scoreSpan(r[i])); row.appendChild(c); });
      row.appendChild(el('td', 'num', fmtFreq(r[6])));
      row.appendChild(el('td', 'num', fmtNum(r[7], 2)));
      row.onclick = function () { location.hash = 'feature=' + Number(r[0]); };
      tbody.appendChild(row);
    });
    table.appendChild(tbody);
    var c = $('content'); clear(c);
    if (S.rows && S.failedParts.length) c.appendChild(missingPartsNotice());
    c.appendChild(table);
    if (!matches) c.appendChild(el('p', 'muted', 'No feature matches these filters.'));
    mark('data-first-paint-ms');
  }

  function missingPartsNotice() {
    var names = S.failedParts.slice().sort(function (a, b) { return a - b; })
      .map(function (n) { return 'data/index-' + pad(n) + '.js'; });
    document.body.setAttribute('data-missing-parts', names.join(' '));
    return el('p', 'error', (S.meta.features - S.rows.length) + ' of ' + S.meta.features + ' features are missing from '
      + 'this list because ' + names.join(', ') + (names.length > 1 ? ' were' : ' was') + ' not loaded. '
      + 'Check that the catalog folder was copied completely, or export it again (saelabel export --format html), '
      + 'then reload the page.');
  }

  // ---- feature view ----
  function histogram(counts, max) {
    var w = 480, h = 120, padB = 18, n = counts.length;
    var svg = svgEl('svg', { 'class': 'hist', width: w, height: h, viewBox: '0 0 ' + w + ' ' + h, role: 'img' });
    var title = svgEl('title', {}); title.textContent = 'Histogram of non-zero activations'; svg.appendChild(title);
    var top = Math.max.apply(null, counts.concat([1]));
    var bw = w / Math.max(1, n);
    counts.forEach(function (c, i) {
      var bh = Math.round((h - padB - 4) * Math.log(1 + c) / Math.log(1 + top));
      var r = svgEl('rect', { x: (i * bw + 0.5).toFixed(1), y: h - padB - bh, width: Math.max(1, bw - 1).toFixed(1), height: bh });
      var t = svgEl('title', {}); t.textContent = 'bin ' + (i + 1) + ': ' + c; r.appendChild(t);
      svg.appendChild(r);
    });
    var t0 = svgEl('text', { x: 0, y: h - 4 }); t0.textContent = '0'; svg.appendChild(t0);
    var t1 = svgEl('text', { x: w, y: h - 4, 'text-anchor': 'end' }); t1.textContent = fmtNum(max, 2); svg.appendChild(t1);
    return svg;
  }

  function shown(token) { return String(token).replace(/\n/g, '\u21b5').replace(/\t/g, '\u21e5').replace(/\r/g, '\u240d'); }

  function tokenRow(tokens, values, scale, rgb, what) {
    var line = el('div', 'tokens');
    tokens.forEach(function (tok, i) {
      var v = values[i] === null || values[i] === undefined ? 0 : values[i];
      var span = el('span', 'tok', shown(tok));
      var alpha = scale > 0 ? Math.max(0, Math.min(1, v / scale)) : 0;
      span.style.backgroundColor = 'rgba(' + rgb + ', ' + alpha.toFixed(3) + ')';
      span.setAttribute('title', JSON.stringify(String(tok)) + ' ' + what + ' ' + Number(v).toFixed(3));
      line.appendChild(span);
    });
    return line;
  }

  function renderFeature(n) {
    $('controls').hidden = true;
    document.body.setAttribute('data-view', 'feature');
    document.body.setAttribute('data-feature', String(n));
    var c = $('content'); clear(c);
    var back = el('a', null, '\u2190 All features'); back.setAttribute('href', S.lastIndexHash || '#');
    c.appendChild(back);
    var r = S.byFeature[n];
    if (!r && !S.rows) { c.appendChild(el('p', 'muted', 'Loading the index\u2026')); document.body.setAttribute('data-view', 'loading'); return; }
    if (!r) {
      c.appendChild(el('p', 'error', 'Feature ' + n + (S.failedParts.length ? ' is not in the part of the index that loaded.'
        : ' is not in this catalog.')));
      if (S.failedParts.length) c.appendChild(missingPartsNotice());
      return;
    }
    var chunk = r[8];
    var f = S.chunks[chunk] && S.chunks[chunk][n];
    var src = 'data/features-' + pad(chunk) + '.js';
    if (!f && S.chunkFailed[chunk]) {
      // Asked again when the feature is opened again (after the folder is fixed, no reload needed).
      delete S.chunkFailed[chunk];
      c.appendChild(el('p', 'error', 'Feature ' + n + ': ' + cannotLoad(src) + ' Then open the feature again.'));
      document.body.setAttribute('data-view', 'error');
      return;
    }
    if (!f) {
      c.appendChild(el('p', 'muted', 'Loading feature ' + n + '\u2026'));
      document.body.setAttribute('data-view', 'loading');
      if (!S.loading[chunk]) {
        S.loading[chunk] = true;
        loadScript(src, function () { delete S.loading[chunk]; S.chunkFailed[chunk] = true; render(); });
      }
      return;
    }
    document.title = 'Feature ' + n + ' — saelabel';
    var h = el('h2', null, 'Feature ' + n + ' '); h.appendChild(statusSpan(f.status)); c.appendChild(h);
    c.appendChild(el('p', 'label-text' + (f.explanation === null ? ' muted' : ''), f.explanation === null ? '(no explanation)' : f.explanation));

    var facts = el('dl', 'facts');
    function fact(k, v) { facts.appendChild(el('dt', null, k)); facts.appendChild(el('dd', null, v)); }
    if (f.explainer_model) fact('Explainer', f.explainer_model);
    if (f.carried_from) fact('Carried from', 'feature ' + f.carried_from.feature + ' of the earlier SAE version (decoder cosine '
      + fmtNum(f.carried_from.cosine, 3) + ', score there ' + fmtNum(f.carried_from.previous_score, 3) + '), re-scored here');
    fact('Frequency', fmtFreq(f.frequency));
    fact('Max activation', fmtNum(f.max_activation, 3));
    if (f.mean_activation !== undefined) fact('Mean activation', fmtNum(f.mean_activation, 3));
    if (f.activating_tokens !== undefined) fact('Activating tokens / windows', f.activating_tokens + ' / ' + f.activating_windows);
    if (f.note) fact('Note', f.note);
    if (f.failed_stage) fact('Failed at', f.failed_stage + (f.failure_reason ? ': ' + f.failure_reason : ''));
    c.appendChild(facts);

    c.appendChild(el('h3', null, 'Scores'));
    var st = el('table', 'scores'), head = el('tr');
    ['Scorer', 'Score', 'Model', 'Details'].forEach(function (t) { head.appendChild(el('th', null, t)); });
    st.appendChild(head);
    ['simulation', 'detection', 'fuzzing'].forEach(function (k) {
      var d = (f.score_details || {})[k], tr = el('tr');
      tr.appendChild(el('td', null, k));
      var td = el('td', 'num'); td.appendChild(scoreSpan(f.scores[k])); tr.appendChild(td);
      tr.appendChild(el('td', null, d ? d.model : '—'));
      var info = '';
      if (d && k === 'simulation') {
        info = 'R\u00b2 ' + fmtNum(d.rsquared, 3) + ', failed windows ' + d.failed_windows + ', retried ' + d.retried_windows + (d.undefined_reason ? ', ' + d.undefined_reason : '');
      } else if (d) {
        info = 'balanced acc. ' + fmtNum(d.balanced_accuracy, 3) + ', F1 ' + fmtNum(d.f1, 3) + ', precision ' + fmtNum(d.precision, 3) + ', recall ' + fmtNum(d.recall, 3);
      }
      tr.appendChild(el('td', 'muted', info));
      st.appendChild(tr);
    });
    c.appendChild(st);

    if (f.histogram && f.histogram.length) {
      c.appendChild(el('h3', null, 'Activation histogram (non-zero, log count)'));
      c.appendChild(histogram(f.histogram, f.max_activation));
    }

    var ex = f.examples || { explain: [], heldout: [] };
    var scale = f.max_activation || 0;
    ex.explain.concat(ex.heldout).forEach(function (w) { w.activations.forEach(function (a) { if (a > scale) scale = a; }); });
    var ORANGE = '245, 140, 20', BLUE = '40, 120, 220';

    var h3 = el('h3', null, 'Explain examples (' + ex.explain.length + ')');
    c.appendChild(h3);
    ex.explain.forEach(function (w) {
      var box = el('div', 'window');
      box.appendChild(el('div', 'tag', w.kind));
      box.appendChild(tokenRow(w.tokens, w.activations, scale, ORANGE, 'activation'));
      c.appendChild(box);
    });

    var h3b = el('h3', null, 'Held-out examples (' + ex.heldout.length + ')');
    var l1 = el('span', 'legend'); l1.style.backgroundColor = 'rgb(' + ORANGE + ')'; h3b.appendChild(l1);
    h3b.appendChild(document.createTextNode('true activation'));
    var l2 = el('span', 'legend'); l2.style.backgroundColor = 'rgb(' + BLUE + ')'; h3b.appendChild(l2);
    h3b.appendChild(document.createTextNode('simulated (0\u201310)'));
    c.appendChild(h3b);
    ex.heldout.forEach(function (w) {
      var box = el('div', 'window heldout');
      box.appendChild(el('div', 'tag', w.kind + ' · true'));
      box.appendChild(tokenRow(w.tokens, w.activations, scale, ORANGE, 'activation'));
      box.appendChild(el('div', 'tag', 'simulated'));
      if (w.simulated) box.appendChild(tokenRow(w.tokens, w.simulated, 10, BLUE, 'simulated'));
      else box.appendChild(el('div', 'muted', 'not simulated'));
      c.appendChild(box);
    });
  }

  function render() {
    if (!S.meta || !(S.rows || S.partial)) return;
    var started = performance.now();
    var p = params();
    if (p.feature !== undefined && p.feature !== '') renderFeature(parseInt(p.feature, 10));
    else renderIndex(p);
    // How long this view took (filter, order, DOM): what a keystroke costs once the index is in.
    document.body.setAttribute('data-render-ms', (performance.now() - started).toFixed(1));
    if (S.rows) document.body.setAttribute('data-ready', '1');
  }

  $('q').addEventListener('input', function () { update({ q: $('q').value, page: '' }); });
  $('min').addEventListener('input', function () { update({ min: $('min').value, page: '' }); });
  $('status').addEventListener('change', function () { update({ status: $('status').value, page: '' }); });
  window.addEventListener('hashchange', render);
  loadScript('data/meta.js');
})();

"""#
}
