// Draws the run from the JSON in #timeline-data: a time axis, fault windows, timeline steps,
// one lane per host with its requests and policy decisions; a click on any mark opens its
// event in the detail panel (and puts its id in the address: #r12, #d3, #s0, #f1, #v0).
(() => {
  'use strict';
  const data = JSON.parse(document.getElementById('timeline-data').textContent);
  const $ = id => document.getElementById(id);
  const chart = $('chart');
  const detail = $('detail');
  const span = Math.max(data.axis.end - data.axis.start, 1);
  const pct = t => (100 * (t - data.axis.start) / span) + '%';
  const wpct = d => (100 * Math.max(d, 0) / span) + '%';
  const fmt = ms => (ms / 1000).toFixed(3).replace(/\.?0+$/, '') + 's';
  const marks = new Map();
  let selected = null;

  function el(tag, cls, parent, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (parent) parent.append(e);
    return e;
  }

  function row(label, note, cls, height) {
    const r = el('div', 'row ' + (cls || ''), chart);
    const l = el('div', 'label', r, label);
    l.title = label;
    if (note) { l.append(' '); el('small', '', l, note); }
    const t = el('div', 'track', r);
    t.style.height = height + 'px';
    return t;
  }

  // A clickable mark for `item` of `type`.
  function mark(parent, cls, item, type, title) {
    const e = el('div', 'mark ' + cls, parent);
    e.title = title;
    e.tabIndex = 0;
    e.setAttribute('role', 'button');
    e.setAttribute('aria-label', title);
    e.dataset.id = item.id;
    e.onclick = () => select(item.id);
    e.onkeydown = ev => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); select(item.id); } };
    const m = marks.get(item.id) || { type, item, els: [] };
    m.els.push(e);
    marks.set(item.id, m);
    return e;
  }

  function register(item, type) {
    if (!marks.has(item.id)) marks.set(item.id, { type, item, els: [] });
  }

  // The time axis, its grid, and the lines that cross every lane.
  const overlay = el('div', '', chart);
  overlay.id = 'overlay';
  const axis = row('time (simulated)', '', 'axis-row', 20);
  for (const t of data.axis.ticks) {
    const tick = el('div', 'tick', axis, t.label);
    tick.style.left = pct(t.at);
    el('div', 'grid', overlay).style.left = pct(t.at);
  }

  // Fault windows, stacked when they overlap.
  const faultRows = Math.max(1, ...data.faults.map(f => f.row + 1));
  const faults = row('faults', data.faults.length ? '' : '(none)', 'fault-row', 4 + 18 * faultRows);
  for (const f of data.faults) {
    const text = f.label + (f.ended ? '' : ' (to the end of the run)');
    const bar = mark(faults, 'fbar k-fault-' + f.kind + (f.ended ? '' : ' open'), f, 'fault',
      `${f.kind}: ${text}, ${fmt(f.start)} to ${fmt(f.end)}`);
    bar.textContent = text;
    bar.style.left = pct(f.start);
    bar.style.width = wpct(f.end - f.start);
    bar.style.top = (2 + 18 * f.row) + 'px';
  }

  // Timeline steps and the violation.
  const steps = row('timeline steps', '', 'step-row', 20);
  for (const s of data.steps) {
    const key = s.fault ? 'k-step-fault' : 'k-step';
    const m = mark(steps, 'smark ' + key + (s.skipped ? ' skipped' : ''), s, 'step',
      `${fmt(s.at)} ${s.what}${s.skipped ? ' (skipped)' : ''}`);
    m.style.left = pct(s.at);
    el('div', 'sline ' + key, overlay).style.left = pct(s.at);
  }
  if (data.violation) {
    const v = data.violation;
    const m = mark(steps, 'vmark k-violation', v, 'violation', `${fmt(v.at)} violation [${v.invariant}] ${v.event}`);
    m.style.left = pct(v.at);
    el('div', 'vline k-violation', overlay).style.left = pct(v.at);
  }

  // One lane per host: fault shading, requests (by source node) and decisions.
  const tracks = {};
  const rowsOf = {};
  for (const lane of data.lanes) {
    const rows = Math.max(lane.rows, 1);
    rowsOf[lane.id] = rows;
    tracks[lane.id] = row(lane.id, lane.kind, 'lane lane-' + lane.kind, 6 + 9 * rows + 14);
  }
  const track = id => tracks[id] || tracks['sim'];
  for (const f of data.faults) {
    for (const lane of f.lanes) {
      const s = el('div', 'shade k-fault-' + f.kind, track(lane));
      s.style.left = pct(f.start);
      s.style.width = wpct(f.end - f.start);
    }
  }
  for (const r of data.requests) {
    const e = mark(track(r.lane), 'req k-' + r.class, r, 'request',
      `${r.conn}: ${r.outcome} (${fmt(r.start)} → ${fmt(r.end)})`);
    e.style.left = pct(r.start);
    e.style.width = wpct(r.end - r.start);
    e.style.top = (4 + 9 * r.row) + 'px';
  }
  for (const d of data.decisions) {
    const e = mark(track(d.lane), 'dec k-decision-' + d.verdict, d, 'decision',
      `${fmt(d.at)} ${d.verdict}: ${d.explanation}`);
    e.style.left = pct(d.at);
    e.style.top = (6 + 9 * (rowsOf[d.lane] || 1)) + 'px';
  }

  // Links between marks: what a request's source was told while it ran, and back.
  const ipOf = r => { const m = /\(([^)]+)\)/.exec(r.source || ''); return m ? m[1] : null; };
  const about = (d, ip) => d.event.includes('src.addr=' + ip + ':') || d.event.includes('src=' + ip);
  const decisionsFor = r => { const ip = ipOf(r); return ip ? data.decisions.filter(d => d.at >= r.start && d.at <= r.end && about(d, ip)) : []; };
  const requestsFor = d => data.requests.filter(r => { const ip = ipOf(r); return ip && r.start <= d.at && d.at <= r.end && about(d, ip); });

  // The detail panel.
  function ref(parent, id, text) {
    const a = el('a', 'ref', parent, text);
    a.tabIndex = 0;
    a.onclick = () => select(id);
    a.onkeydown = ev => { if (ev.key === 'Enter') select(id); };
    return a;
  }
  function table(rows) {
    const t = el('table', '', detail);
    for (const [k, v] of rows) {
      if (v === undefined || v === null || v === '') continue;
      const tr = el('tr', '', t);
      el('td', '', tr, k);
      const td = el('td', '', tr);
      if (v instanceof Node) td.append(v); else td.textContent = String(v);
    }
  }
  function events(title, list) {
    if (!list.length) return;
    el('h3', '', detail, title);
    const ul = el('ul', 'events', detail);
    for (const e of list) el('li', '', ul, `${fmt(e.at)} ${e.host} ${e.component} ${e.what}`);
  }
  function links(title, list, label) {
    if (!list.length) return;
    el('h3', '', detail, title);
    const ul = el('ul', '', detail);
    for (const x of list) ref(el('li', '', ul), x.id, label(x));
  }
  const stepById = id => data.steps.find(s => s.id === id);

  function show(type, x) {
    detail.replaceChildren();
    if (type === 'request') {
      el('h3', '', detail, `request ${x.conn}`);
      table([
        ['outcome', x.outcome], ['status', x.status ?? (x.protocol === 'tcp' ? '— (TCP)' : null)],
        ['protocol', x.protocol], ['source', x.source], ['source node', x.lane],
        ['destination', x.destination], ['via', x.via], ['backend', x.backend],
        ['started', fmt(x.start)], ['finished', fmt(x.end)], ['took', (x.end - x.start) + ' ms'],
        ['traffic', x.traffic],
      ]);
      links('policy decisions about its source while it ran', decisionsFor(x), d => `${fmt(d.at)} ${d.lane}: ${d.explanation}`);
      events('its events', x.events);
    } else if (type === 'decision') {
      el('h3', '', detail, `policy decision: ${x.verdict}`);
      el('div', 'explanation ' + x.verdict, detail, x.explanation);
      table([
        ['verdict', x.verdict], ['decided by', x.basis === 'policy' ? 'policy ' + x.policy : x.basis === 'default' ? 'the default rule' : x.basis],
        ['policy', x.policy], ['rule', x.rule], ['at', fmt(x.at)], ['host', x.lane],
        ['component', x.component], ['connection', x.conn],
      ]);
      el('h3', '', detail, 'log line');
      el('pre', '', detail, x.event);
      links('requests from that source in flight', requestsFor(x), r => `${r.conn} ${r.outcome} (${fmt(r.start)} → ${fmt(r.end)})`);
    } else if (type === 'step') {
      el('h3', '', detail, `timeline step at ${fmt(x.at)}`);
      table([['action', x.what], ['kind', x.kind], ['fault', x.fault ? 'yes' : 'no'], ['skipped', x.skipped ? 'yes' : null]]);
      events('what the driver said', x.notes.map(n => ({ at: x.at, host: 'sim', component: 'timeline', what: n })));
      links('fault windows it starts or ends', data.faults.filter(f => f.start_step === x.id || f.end_step === x.id), f => `${f.kind}: ${f.label}`);
    } else if (type === 'fault') {
      el('h3', '', detail, `${x.kind}: ${x.label}`);
      const start = stepById(x.start_step);
      const end = x.end_step ? stepById(x.end_step) : null;
      const startRef = document.createElement('span');
      if (start) ref(startRef, start.id, `${fmt(start.at)} ${start.what}`);
      const endRef = document.createElement('span');
      if (end) ref(endRef, end.id, `${fmt(end.at)} ${end.what}`); else endRef.textContent = 'never: lasted to the end of the run';
      table([
        ['kind', x.kind], ['from', fmt(x.start)], ['to', fmt(x.end)], ['lasted', (x.end - x.start) + ' ms'],
        ['hosts', x.hosts.join(', ')], ['started by', startRef], ['ended by', endRef],
      ]);
      const during = data.requests.filter(r => r.start < x.end && r.end > x.start);
      const counts = {};
      for (const r of during) counts[r.outcome] = (counts[r.outcome] || 0) + 1;
      table(Object.keys(counts).sort().map(k => ['requests ' + k, counts[k]]));
      links('policy decisions during it', data.decisions.filter(d => d.at >= x.start && d.at <= x.end).slice(0, 50), d => `${fmt(d.at)} ${d.lane}: ${d.explanation}`);
    } else if (type === 'violation') {
      el('h3', '', detail, `invariant violated: ${x.invariant}`);
      el('div', 'explanation', detail, x.event);
      table([['invariant', x.invariant], ['at', fmt(x.at)]]);
      events('the events before it', x.before);
    }
  }

  function select(id) {
    const m = marks.get(id);
    if (!m) return;
    if (selected) for (const e of selected.els) e.classList.remove('sel');
    selected = m;
    for (const e of m.els) e.classList.add('sel');
    if (m.els[0] && m.els[0].scrollIntoView) m.els[0].scrollIntoView({ block: 'nearest', inline: 'nearest' });
    show(m.type, m.item);
    if (location.hash !== '#' + id) {
      try { history.replaceState(null, '', '#' + id); } catch (_) { /* a file: page may refuse */ }
    }
  }

  // The lists below the chart: fault windows and steps, clickable too.
  const faultList = $('fault-list');
  for (const f of data.faults) {
    const li = el('li', '', faultList, `${fmt(f.start)} – ${f.ended ? fmt(f.end) : 'end of run'}: ${f.kind}: ${f.label}`);
    li.onclick = () => select(f.id);
  }
  if (!data.faults.length) el('li', '', faultList, 'none');
  const stepList = $('step-list');
  for (const s of data.steps) {
    const li = el('li', '', stepList, `${fmt(s.at)} ${s.what}${s.skipped ? ' (skipped)' : ''}${s.notes.length ? ' — ' + s.notes.join('; ') : ''}`);
    li.onclick = () => select(s.id);
  }
  if (data.violation) {
    register(data.violation, 'violation');
    const v = data.violation;
    const li = el('li', '', stepList, `${fmt(v.at)} VIOLATION [${v.invariant}] ${v.event}`);
    li.onclick = () => select(v.id);
  }
  if (data.decisions_omitted) {
    el('p', 'help', $('lists'), `${data.decisions_omitted} more policy decisions are in the trace (--trace) but not drawn.`);
  }

  // Legend entries switch their marks on and off; zoom widens the chart.
  for (const box of document.querySelectorAll('#legend input[data-toggle]')) {
    box.onchange = () => chart.classList.toggle('hide-' + box.dataset.toggle, !box.checked);
  }
  $('zoom').onchange = ev => { chart.style.width = (100 * Number(ev.target.value)) + '%'; };
  const open = () => { const id = location.hash.slice(1); if (marks.has(id)) select(id); };
  window.addEventListener('hashchange', open);
  open();
})();
