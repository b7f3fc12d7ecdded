'use strict';
// The meshd dashboard: a `state` event every second from /ui/events; text from peers is only
// ever set as textContent.
let selected = new URLSearchParams(location.search).get('job');
let source = null;
let job = null;
let detail = null;
const cells = new Map();

const $ = (s) => document.querySelector(s);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function duration(secs) {
  if (!isFinite(secs) || secs < 0) return '—';
  secs = Math.round(secs);
  const h = Math.floor(secs / 3600), m = Math.floor(secs % 3600 / 60), s = secs % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

function bytes(n) {
  if (n === null || n === undefined) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

function connect() {
  if (source) source.close();
  source = new EventSource('/ui/events' + (selected ? '?job=' + encodeURIComponent(selected) : ''));
  source.addEventListener('state', (e) => render(JSON.parse(e.data)));
  source.onopen = () => { $('#conn').textContent = 'live'; $('#conn').className = 'conn live'; };
  source.onerror = () => { $('#conn').textContent = 'reconnecting…'; $('#conn').className = 'conn'; };
}

function render(s) {
  renderJobs(s.jobs.jobs);
  renderGrid(s.job);
  renderPeers(s.peers.peers);
}

function eta(j) {
  if (j.state !== 'running' || !j.frames_done) return '—';
  const elapsed = (Date.now() - j.created_unix_ms) / 1000;
  return duration((j.frames_total - j.frames_done) * elapsed / j.frames_done);
}

function renderJobs(jobs) {
  const body = $('#jobs tbody');
  body.replaceChildren();
  $('#no-jobs').hidden = jobs.length > 0;
  for (const j of jobs) {
    const tr = el('tr');
    tr.dataset.job = j.id;
    if (j.id === selected) tr.classList.add('selected');
    const name = el('td', 'name', j.name);
    name.title = j.id;
    tr.append(name);
    const state = el('td', 'state', j.state + (j.archived ? ' · archived' : ''));
    if (j.waiting) state.title = j.waiting;
    if (j.failure) state.title = j.failure;
    tr.append(state);
    const written = j.frames_written !== null && j.frames_written !== undefined ? ` (${j.frames_written} here)` : '';
    tr.append(el('td', 'frames', `${j.frames_done}/${j.frames_total}${written}`));
    tr.append(el('td', 'eta', eta(j)));
    tr.append(el('td', 'dupl', j.duplicates));
    tr.append(el('td', 'bytes', bytes(j.project && j.project.bytes)));
    const moved = el('td', 'moved', bytes(j.bytes_moved));
    moved.title = 'received by this machine for the job: project, frames, thumbnails';
    tr.append(moved);
    tr.append(el('td', 'cost', j.cost_usd === null || j.cost_usd === undefined ? '—' : `$${j.cost_usd.toFixed(2)}`));
    const actions = el('td', 'actions');
    const live = !j.archived && (j.state === 'running' || j.state === 'paused');
    if (live) {
      if (j.state === 'paused') actions.append(button('resume', 'resume', j.id));
      else actions.append(button('pause', 'pause', j.id));
      actions.append(button('cancel', 'cancel', j.id));
      actions.append(button('prio-up', `prio ${j.priority} +`, j.id));
      actions.append(button('prio-down', '−', j.id));
    }
    if (j.frames_failed > 0 && j.out_dir) actions.append(button('retry', 'retry failed', j.id));
    tr.append(actions);
    body.append(tr);
  }
}

function button(action, label, id) {
  const b = el('button', action, label);
  b.type = 'button';
  b.dataset.action = action;
  b.dataset.job = id;
  return b;
}

async function control(id, action) {
  const res = await fetch('/ui/control', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ job: id, action }),
  });
  if (!res.ok) {
    const e = await res.json().catch(() => ({ error: res.statusText }));
    $('#conn').textContent = `error: ${e.error}`;
  }
}

$('#jobs tbody').addEventListener('click', (e) => {
  const b = e.target.closest('button');
  const row = e.target.closest('tr');
  if (b) {
    const up = row.querySelector('.prio-up');
    const prio = up ? Number(up.textContent.match(/-?\d+/)[0]) : 0;
    const action = { pause: 'pause', resume: 'resume', cancel: 'cancel', retry: 'retry',
      'prio-up': { priority: prio + 1 }, 'prio-down': { priority: prio - 1 } }[b.dataset.action];
    control(b.dataset.job, action);
  } else if (row && e.target.closest('td.name')) {
    selected = row.dataset.job;
    detail = null;
    cells.clear();
    $('#grid').replaceChildren();
    history.replaceState(null, '', '?job=' + selected);
    connect();
  }
});

function renderGrid(j) {
  job = j;
  $('#job-panel').hidden = !j;
  if (!j) return;
  $('#job-name').textContent = j.name;
  const grid = $('#grid');
  for (const f of j.frames) {
    let c = cells.get(f.frame);
    if (!c) {
      c = el('div', 'cell');
      c.dataset.frame = f.frame;
      c.append(el('span', null, f.frame));
      cells.set(f.frame, c);
      grid.append(c);
    }
    c.className = `cell ${f.state}`;
    c.title = `frame ${f.frame}: ${f.state}`;
    // The renderer's thumbnail travels with the frame; a frame written here without one
    // (a multilayer EXR) gets one made from the written file.
    if (f.state === 'done' && (f.thumb || j.out_dir) && !c.querySelector('img')) {
      const img = el('img');
      img.loading = 'lazy';
      img.alt = `frame ${f.frame}`;
      img.onerror = () => img.remove();
      img.src = `/ui/frame/${j.id}/${f.frame}?thumb=1`;
      c.prepend(img);
    }
  }
  if (detail !== null) showDetail(detail);
}

$('#grid').addEventListener('click', (e) => {
  const c = e.target.closest('.cell');
  if (c) showDetail(Number(c.dataset.frame), true);
});
$('#close-detail').addEventListener('click', () => { detail = null; $('#frame-detail').hidden = true; });

function showDetail(n, fresh) {
  const f = job && job.frames.find((x) => x.frame === n);
  if (!f) return;
  detail = n;
  $('#frame-detail').hidden = false;
  $('#fd-frame').textContent = n;
  $('#fd-state').textContent = f.state + (f.samples_total ? ` (${f.samples_done}/${f.samples_total} samples)` : '');
  $('#fd-peer').textContent = f.peer || '—';
  $('#fd-time').textContent = f.render_ms ? `${(f.render_ms / 1000).toFixed(1)} s` : '—';
  const list = $('#fd-failures');
  list.replaceChildren(...f.failures.map((r) => el('li', null, r)));
  if (fresh) loadLog(job.id, n);
  const img = $('#fd-image');
  if (f.state === 'done' && (job.out_dir || f.thumb)) {
    // The full frame where it is written here, else the renderer's thumbnail.
    const src = job.out_dir ? `/ui/frame/${job.id}/${n}` : `/ui/frame/${job.id}/${n}?thumb=1`;
    if (fresh || img.getAttribute('src') !== src) img.src = src;
    $('#fd-link').href = src;
    img.hidden = false;
  } else {
    img.hidden = true;
  }
}

async function loadLog(id, n) {
  const pre = $('#fd-log');
  pre.textContent = 'asking the renderer…';
  const res = await fetch(`/ui/logs/${id}/${n}`);
  const body = await res.json().catch(() => ({ error: res.statusText }));
  if (detail !== n) return;
  if (!res.ok) {
    pre.textContent = body.error;
    return;
  }
  const head = body.live ? '(rendering now: the lines so far)\n' : '';
  pre.textContent = head + body.lines.join('\n');
}

// Seconds per frame of each peer on the open job, from its finished frames.
function speeds() {
  const by = new Map();
  for (const f of (job && job.frames) || []) {
    if (f.state !== 'done' || !f.peer || !f.render_ms) continue;
    const [sum, n] = by.get(f.peer) || [0, 0];
    by.set(f.peer, [sum + f.render_ms, n + 1]);
  }
  return by;
}

function renderPeers(peers) {
  const body = $('#peers tbody');
  body.replaceChildren();
  const speed = speeds();
  for (const p of peers) {
    const tr = el('tr');
    tr.dataset.peer = p.id;
    const id = el('td', null, p.id.slice(0, 12) + (p.self ? ' (this)' : ''));
    id.title = p.id;
    tr.append(id);
    tr.append(el('td', 'online', p.self || p.connected ? 'online' : 'offline'));
    tr.append(el('td', null, p.render_device || (p.can_render ? '' : 'no render')));
    tr.append(el('td', null, p.blender || '—'));
    const sp = speed.get(p.id);
    const cell = el('td', 'speed', sp ? `${(sp[0] / sp[1] / 1000).toFixed(1)} s/frame` : '—');
    cell.title = job ? `on ${job.name}, from ${sp ? sp[1] : 0} finished frames` : 'open a job to see';
    tr.append(cell);
    tr.append(el('td', null, p.frames_rendered));
    tr.append(el('td', null, (p.rendering || []).join(', ')));
    tr.append(el('td', null, p.rented ? p.rented.usd_per_hour.toFixed(2) : '—'));
    body.append(tr);
  }
}

connect();
