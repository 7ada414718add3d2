// The console's views. Each renders into the view section and keeps its
// streams and timers in the Scope it is given.
'use strict';

function card(k, v, id) { return h('div', { class: 'card' }, h('div', { class: 'k' }, k), h('div', { class: 'v', id }, v)); }
function table(head, rows, label) {
  return h('table', { 'aria-label': label }, h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))), h('tbody', {}, rows));
}
function act(label, aria, f) {
  return h('button', { type: 'button', 'aria-label': aria, 'data-action': label.toLowerCase(), onclick: async (ev) => {
    ev.target.disabled = true;
    try { await f(); showError(null); } catch (e) { showError(e); } finally { ev.target.disabled = false; }
  } }, label);
}
function taskLink(id) { return h('a', { href: '#/task/' + encodeURIComponent(id), class: 'mono' }, id); }

// Cluster: members (with those that are down), leader, epoch, last fence.
function viewCluster(root, scope) {
  const sum = h('div', { class: 'summary' });
  const body = h('div');
  root.append(h('h1', {}, 'Cluster'), sum, body);
  const load = newest(() => call('ClusterService', 'ListMembers', {}), (r) => {
    const f = r.lastFence;
    sum.replaceChildren(
      card('Leader', r.leader || 'none', 'leader'), card('Epoch', r.epoch || '0', 'epoch'),
      card('Elected', r.electedAt ? fmtAgo(r.electedAt) + ' ago' : ''), card('Coordinator', r.coordinator || ''),
      card('Answered by', (r.self || '') + (r.selfReady ? '' : ' (not ready)')),
      card('Last fence', f ? f.reason + ' · ' + (f.durationMs || 0) + ' ms' + (f.beforeExpiry ? ' (before expiry)' : '') : 'none'));
    const rows = (r.members || []).map((m) => h('tr', { 'data-member': m.name, class: m.state === 'down' ? 'state-down' : '' },
      h('td', {}, m.name), h('td', {}, m.state || 'up'), h('td', {}, m.leader ? 'leader' : 'follower'),
      h('td', {}, (m.priority || 0) + ' / ' + (m.currentPriority || 0)), h('td', {}, m.session || ''),
      h('td', { title: m.healthReason || '' }, m.health || ''), h('td', { class: 'mono' }, m.address || ''),
      h('td', {}, m.version || ''), h('td', {}, m.startedAt && m.state !== 'down' ? fmtAgo(m.startedAt) : (m.since ? 'down ' + fmtAgo(m.since) : ''))));
    body.replaceChildren(table(['Name', 'State', 'Role', 'Priority / current', 'Session', 'Health', 'Address', 'Version', 'Uptime'], rows, 'Members'));
  });
  const refresh = scope.throttle(() => load().catch(showError));
  scope.every(5000, refresh);
  scope.live('EventService', 'WatchEvents', () => ({ since: new Date().toISOString() }), refresh);
}

const states = ['', 'unfinished', 'finished', 'waiting', 'running', 'paused', 'succeeded', 'failed', 'cancelled'];
const pageSize = 50;

function taskActions(t) {
  if (!may('operator')) return h('span', { class: 'reason' }, '');
  const ref = { id: t.id };
  const out = [];
  if (t.state === 'waiting' || t.state === 'running' || t.state === 'paused') out.push(act('Cancel', 'Cancel task ' + t.id, () => call('TaskService', 'CancelTask', ref)));
  if (t.state === 'waiting' || t.state === 'running') out.push(act('Pause', 'Pause task ' + t.id, () => call('TaskService', 'PauseTask', ref)));
  if (t.state === 'paused') out.push(act('Resume', 'Resume task ' + t.id, () => call('TaskService', 'ResumeTask', ref)));
  return h('span', { class: 'actions' }, out);
}

const actionable = (t) => t.state === 'waiting' || t.state === 'running' || t.state === 'paused';

// taskRow renders one task; selected, when given, is the bulk selection
// the row's checkbox joins (operators only, unfinished tasks only).
function taskRow(t, selected) {
  let pick = '';
  if (selected && may('operator') && actionable(t)) {
    pick = h('input', { type: 'checkbox', 'aria-label': 'Select task ' + t.id, 'data-select': t.id });
    pick.checked = selected.has(t.id);
    pick.addEventListener('change', () => { if (pick.checked) selected.add(t.id); else selected.delete(t.id); selected.changed(); });
  }
  return h('tr', { 'data-task': t.id, 'data-state': t.state },
    h('td', {}, pick), h('td', {}, taskLink(t.id)), h('td', {}, t.type), h('td', { class: 'state-' + t.state }, t.state),
    h('td', {}, t.runner || t.node || ''), h('td', {}, progress(t)), h('td', { class: 'reason' }, t.reason || (t.error ? t.error.message : '')),
    h('td', {}, fmtAgo(t.created)), h('td', {}, taskActions(t)));
}

// Tasks: a server-paged, filtered table, patched live by WatchTasks.
function viewTasks(root, scope) {
  const f = { status: h('select', { 'aria-label': 'Filter by state' }, states.map((s) => h('option', { value: s }, s || 'all states'))),
    type: h('input', { placeholder: 'type', 'aria-label': 'Filter by type' }),
    node: h('input', { placeholder: 'node', 'aria-label': 'Filter by node' }),
    key: h('input', { placeholder: 'id contains', 'aria-label': 'Filter by id' }) };
  let offset = 0, shown = new Map();
  const info = h('span', { id: 'task-count' });
  // The bulk selection: ids picked on this page, acted on one call each.
  const selected = new Set();
  const bulkCount = h('span', { id: 'bulk-count' });
  const bulkInfo = h('span', { id: 'bulk-result', role: 'status' });
  const bulkButtons = [];
  selected.changed = () => { for (const b of bulkButtons) b.disabled = selected.size === 0; bulkCount.textContent = selected.size ? selected.size + ' selected' : ''; };
  const bulk = (label, method) => {
    const b = h('button', { type: 'button', 'data-bulk': method, 'aria-label': label + ' the selected tasks', onclick: async () => {
      const ids = [...selected];
      for (const x of bulkButtons) x.disabled = true;
      allBox.checked = false;
      bulkInfo.textContent = label + ': ' + ids.length + ' …';
      const refused = [];
      for (const id of ids) {
        try { await call('TaskService', method, { id }); selected.delete(id); } catch (e) { refused.push(id + ': ' + (e.code || '') + ' ' + e.message); }
      }
      selected.changed();
      bulkInfo.textContent = label + ': ' + (ids.length - refused.length) + ' of ' + ids.length + ' done' + (refused.length ? '; refused: ' + refused.join('; ') : '');
      load();
    } }, label + ' selected');
    b.disabled = true;
    bulkButtons.push(b);
    return b;
  };
  const allBox = h('input', { type: 'checkbox', 'aria-label': 'Select every unfinished task on this page', 'data-select': 'all' });
  allBox.addEventListener('change', () => {
    for (const box of body.querySelectorAll('input[data-select]')) { box.checked = allBox.checked; box.dispatchEvent(new Event('change')); }
  });
  const prev = h('button', { type: 'button', 'aria-label': 'Previous page', onclick: () => { offset = Math.max(0, offset - pageSize); load(); } }, '‹ Prev');
  const next = h('button', { type: 'button', 'aria-label': 'Next page', onclick: () => { offset += pageSize; load(); } }, 'Next ›');
  const body = h('tbody');
  root.append(h('h1', {}, 'Tasks'),
    h('div', { class: 'filters', role: 'search' }, f.status, f.type, f.node, f.key,
      h('button', { type: 'button', 'aria-label': 'Apply filters', onclick: () => { offset = 0; load(); } }, 'Filter')),
    may('operator') ? h('div', { class: 'bulk' }, bulk('Pause', 'PauseTask'), bulk('Resume', 'ResumeTask'), bulk('Cancel', 'CancelTask'), bulkCount, bulkInfo) : '',
    h('table', { 'aria-label': 'Tasks' }, h('thead', {}, h('tr', {}, [may('operator') ? allBox : '', 'ID', 'Type', 'State', 'Runner', 'Progress', 'Why waiting / error', 'Age', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))), body),
    h('div', { class: 'pager' }, prev, info, next));
  for (const k of ['type', 'node', 'key']) f[k].addEventListener('keydown', (e) => { if (e.key === 'Enter') { offset = 0; load(); } });
  f.status.addEventListener('change', () => { offset = 0; load(); });
  const req = () => ({ status: f.status.value, type: f.type.value.trim(), node: f.node.value.trim(), key: f.key.value.trim(),
    limit: pageSize, offset, newestFirst: true, explain: true });
  const read = newest(() => callEarly('TaskService', 'ListTasks', req()), (r) => {
    const ts = r.tasks || [];
    shown = new Map(ts.map((t) => [t.id, t]));
    // The selection keeps only what this page still shows.
    for (const id of [...selected]) if (!shown.has(id) || !actionable(shown.get(id))) selected.delete(id);
    allBox.checked = false;
    selected.changed();
    body.replaceChildren(...ts.map((t) => taskRow(t, selected)));
    // A user-timing mark at the first rows this page load shows (read
    // by taskd-bench console; visible in the browser's performance tools).
    if (ts.length && !performance.getEntriesByName('taskd:tasks-rendered').length) performance.mark('taskd:tasks-rendered');
    // total_at_least: a filtered page stopped reading the finished
    // tasks once it had the page; more may follow.
    const total = r.total || 0, more = !!r.totalAtLeast;
    info.textContent = total ? (offset + 1) + '–' + (offset + ts.length) + ' of ' + total + (more ? '+' : '') : 'no tasks';
    prev.disabled = offset === 0; next.disabled = offset + ts.length >= total && !(more && ts.length === pageSize);
  });
  const load = () => read().catch(showError);
  const reload = scope.throttle(load);
  // matches: would the filters keep t (an unfinished task)?
  const matches = (t) => {
    const st = f.status.value, typ = f.type.value.trim(), node = f.node.value.trim(), key = f.key.value.trim();
    return (!st || st === 'unfinished' || st === t.state) && (!typ || t.type === typ) &&
      (!node || t.runner === node || t.node === node) && (!key || t.id.includes(key));
  };
  // known: the state of every unfinished task, from WatchTasks, so that a
  // progress write to a task off the page costs nothing.
  const known = new Map();
  const showsFinished = () => ['', 'finished', 'succeeded', 'failed', 'cancelled'].includes(f.status.value);
  // The first page is asked for alone; the live stream opens once it is
  // shown: the stream's first message (every unfinished task, a thousand
  // and more) must not compete with the page, in the server or on the
  // wire. That message refetches the page, which covers what changed in
  // between.
  load().finally(() => { if (!scope.done) scope.live('TaskService', 'WatchTasks', {}, onWatch); });
  function onWatch(m) {
    if (m.snapshot) {
      known.clear(); (m.tasks || []).forEach((t) => known.set(t.id, t.state)); reload();
      // A user-timing mark once the table is live (read by taskd-bench
      // console, which lets a page settle before it loads the next).
      if (!performance.getEntriesByName('taskd:tasks-live').length) performance.mark('taskd:tasks-live');
      return;
    }
    let refetch = false;
    for (const id of m.removed || []) {
      known.delete(id);
      if (shown.has(id) || showsFinished()) refetch = true;
    }
    for (const t of m.tasks || []) {
      const prev = known.get(t.id);
      known.set(t.id, t.state);
      const row = body.querySelector('tr[data-task="' + CSS.escape(t.id) + '"]');
      if (row && matches(t)) { if (!actionable(t)) { selected.delete(t.id); selected.changed(); } row.replaceWith(taskRow(t, selected)); shown.set(t.id, t); continue; }
      if (!row && prev === t.state) continue; // progress of a task on another page
      if (!row && prev === undefined && matches(t) && offset === 0) {
        // A new task on the first page (newest first): show it now; the
        // refetch below corrects the page and the count.
        body.prepend(taskRow(t, selected)); shown = new Map([[t.id, t], ...shown]);
        if (body.children.length > pageSize) body.lastElementChild.remove();
      }
      if (row || matches(t)) refetch = true;
    }
    if (refetch) reload();
  }
}

// Task page: every field, the attempts on a time axis, actions; live by
// WatchTask until the task is final.
function viewTask(root, scope, id) {
  const head = h('div'), body = h('div');
  root.append(h('p', {}, h('a', { href: '#/tasks' }, '‹ Tasks')), head, body);
  const render = (t) => {
    head.replaceChildren(h('h1', {}, 'Task ', h('span', { class: 'mono', id: 'task-id' }, t.id)),
      h('div', { class: 'summary' }, card('State', t.state, 'task-state'), card('Runner', t.runner || '—', 'task-runner'),
        card('Attempt', t.attempt || 0, 'task-attempt'), card('Type', t.type), card('Priority', t.priority || 0)),
      h('p', {}, progress(t)), t.reason ? h('p', { class: 'reason', id: 'task-reason' }, 'Why waiting: ' + t.reason) : '',
      t.error ? h('p', { class: 'error' }, t.error.code + ': ' + t.error.message) : '');
    const hist = t.history || [];
    const start = hist.length ? new Date(hist[0].started).getTime() : Date.now();
    const end = Math.max(Date.now(), ...hist.map((a) => new Date(a.ended || Date.now()).getTime()));
    const span = Math.max(1, end - start);
    const axis = h('div', { class: 'axis', role: 'img', 'aria-label': 'Attempts on a time axis' }, hist.map((a) => {
      const s = new Date(a.started).getTime(), e = a.ended ? new Date(a.ended).getTime() : Date.now();
      const seg = h('div', { class: 'seg ' + (a.outcome || ''), title: 'attempt ' + a.n + ' on ' + a.runner + ': ' + (a.outcome || 'running') + (a.error ? ' — ' + a.error : '') }, '#' + a.n + ' ' + a.runner);
      seg.style.left = (100 * (s - start) / span) + '%'; seg.style.width = Math.max(1, 100 * (e - s) / span) + '%';
      return seg;
    }));
    const rows = hist.map((a) => h('tr', { 'data-attempt': a.n }, h('td', {}, a.n), h('td', {}, a.runner), h('td', {}, fmtTime(a.started)),
      h('td', {}, fmtTime(a.ended)), h('td', {}, a.outcome || 'running'), h('td', {}, a.resumedFromCheckpoint ? 'yes' : 'no'),
      h('td', {}, a.progressDone || '0'), h('td', { class: 'reason' }, a.error || '')));
    const ctl = [];
    if (may('operator') && !['succeeded', 'failed', 'cancelled'].includes(t.state)) {
      const rate = h('input', { placeholder: 'bytes/s (0: unlimited)', 'aria-label': 'Rate limit in bytes per second', size: 18 });
      const win = h('input', { placeholder: 'HH:MM-HH:MM', 'aria-label': 'Run window', size: 12 });
      ctl.push(h('h2', {}, 'Actions'), h('div', { class: 'actions' }, taskActions(t),
        rate, act('Set rate', 'Set rate limit', () => call('TaskService', 'SetTaskRate', { id: t.id, bytesPerSecond: rate.value || '0' })),
        act('Clear rate', 'Clear rate limit', () => call('TaskService', 'SetTaskRate', { id: t.id, clear: true })),
        win, act('Set window', 'Set run window', () => call('TaskService', 'SetTaskWindow', { id: t.id, window: win.value })),
        act('Clear window', 'Clear run window', () => call('TaskService', 'SetTaskWindow', { id: t.id, clear: true }))));
    }
    body.replaceChildren(...ctl, h('h2', {}, 'Attempts'), axis,
      table(['#', 'Runner', 'Started', 'Ended', 'Outcome', 'From checkpoint', 'Progress', 'Error'], rows, 'Attempts'),
      h('h2', {}, 'Details'), h('dl', { class: 'fields' }, [
        ['Created', fmtTime(t.created)], ['Started', fmtTime(t.started)], ['Finished', fmtTime(t.finished)],
        ['Updated', fmtTime(t.updated)], ['Pinned node', t.node || ''], ['Window', t.window ? t.window + ' ' + (t.windowZone || '') : ''],
        ['Retries', (t.retries || 0) + ' of ' + (t.maxRetries || 0)], ['Checkpoint', t.hasCheckpoint ? 'yes' : 'no'],
        ['Rate limit', t.rateLimitSet ? fmtBytes(t.rateLimit) + '/s' : 'spec'], ['Schedule', t.schedule || ''],
        ['Spec', h('code', {}, t.spec || '')]].flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
  };
  const logSeen = taskLog(root, scope, id);
  scope.live('TaskService', 'WatchTask', { id }, (m) => { render(m.task); logSeen(m.task); });
}

// taskLog: the task's log (an exec program's output and log lines). The
// runner stores lines in the same write as the task's record, so each
// change the page's WatchTask reports is the event to read the lines
// after the last one shown (at most once a second): the page adds no
// watch of its own to the server. Lines are text, never HTML. It returns
// the function the task page calls with each version of the task.
const logLines = 2000;
function taskLog(root, scope, id) {
  const box = h('div', { class: 'log', id: 'task-log', role: 'log', 'aria-label': 'Task log', tabindex: 0 });
  const info = h('p', { class: 'muted', id: 'task-log-info' }, 'No log lines (exec tasks write one).');
  root.append(h('h2', {}, 'Log'), info, box);
  let last = 0, dropped = 0, kept = 0, final = false, busy = false, again = false;
  const show = () => {
    if (!box.childElementCount) return;
    info.textContent = box.childElementCount + ' lines' + (kept + dropped ? '; ' + (kept + dropped) + ' older lines not shown' : '') + (final ? '' : '; following');
  };
  const onMsg = (m) => {
    const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    for (const l of m.lines || []) {
      const seq = Number(l.seq || 0);
      if (seq <= last) continue;
      last = seq;
      box.append(h('div', { class: 'line', 'data-seq': seq }, h('span', { class: 'at' }, fmtTime(l.at) + ' #' + (l.attempt || 0) + ' '), l.text || ''));
    }
    while (box.childElementCount > logLines) { box.firstElementChild.remove(); dropped++; }
    kept = Number(m.dropped || 0);
    if (stick) box.scrollTop = box.scrollHeight;
  };
  const read = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try { await stream('TaskService', 'TaskLog', { id, afterSeq: String(last) }, onMsg, scope.ctl.signal); } catch (e) { if (!scope.done) showError(e); }
    busy = false;
    show();
    if (again && !scope.done) { again = false; refresh(); }
  };
  const refresh = scope.throttle(read);
  return (t) => { final = ['succeeded', 'failed', 'cancelled'].includes(t.state); show(); refresh(); };
}

// Runners: capacity and load, cordon/uncordon/drain.
function viewRunners(root, scope) {
  const body = h('div');
  root.append(h('h1', {}, 'Runners'), body);
  const load = newest(() => call('RunnerService', 'ListRunners', {}), (r) => {
    const rows = (r.runners || []).map((x) => {
      const mark = (action) => act(action[0].toUpperCase() + action.slice(1), action + ' runner ' + x.node, () => call('RunnerService', 'SetRunnerMarks', { node: x.node, action }).then(load));
      return h('tr', { 'data-runner': x.node }, h('td', {}, x.node), h('td', { class: x.live ? 'ok' : 'bad' }, x.live ? 'live' : 'down'),
        h('td', {}, (x.running || 0) + ' / ' + (x.capacity || 0)), h('td', {}, x.draining ? 'draining' : x.cordoned ? 'cordoned' : 'schedulable'),
        h('td', {}, (x.types || []).join(', ')), h('td', {}, x.started ? fmtAgo(x.started) : ''),
        h('td', {}, may('operator') ? h('span', { class: 'actions' }, mark('cordon'), mark('uncordon'), mark('drain')) : ''));
    });
    body.replaceChildren(table(['Node', 'Live', 'Running / capacity', 'Marks', 'Types', 'Up', 'Actions'], rows, 'Runners'));
  });
  const refresh = scope.throttle(() => load().catch(showError));
  scope.every(5000, refresh);
  scope.live('TaskService', 'WatchTasks', {}, refresh);
}

// VIPs: holder, state, since, health; drain to a node.
function viewVIPs(root, scope) {
  const body = h('div');
  root.append(h('h1', {}, 'Virtual IPs'), body);
  const load = newest(() => call('VIPService', 'ListVIPs', {}), (r) => {
    const rows = (r.vips || []).map((v) => {
      const to = h('input', { placeholder: 'node', 'aria-label': 'Drain ' + v.service + ' to node', size: 8 });
      return h('tr', { 'data-vip': v.service }, h('td', {}, v.service), h('td', { class: 'mono' }, v.address), h('td', {}, v.interface || ''),
        h('td', {}, v.holder || 'nobody'), h('td', { class: v.up ? 'ok' : 'bad' }, v.up ? 'up' : 'down'), h('td', {}, v.heldSince ? fmtAgo(v.heldSince) : ''),
        h('td', {}, v.holderHealth || ''), h('td', { class: 'reason' }, [v.error, v.assignedReason].filter(Boolean).join(' · ')),
        h('td', {}, may('admin') ? h('span', { class: 'actions' }, to, act('Drain', 'Drain ' + v.service, () => call('VIPService', 'DrainVIP', { service: v.service, to: to.value.trim() }).then(load))) : ''));
    });
    body.replaceChildren(rows.length ? table(['Service', 'Address', 'Interface', 'Holder', 'State', 'Held for', 'Holder health', 'Reason', 'Actions'], rows, 'VIPs') : h('p', {}, 'No VIPs (taskctl vip set).'));
  });
  const refresh = scope.throttle(() => load().catch(showError));
  scope.every(5000, refresh);
  scope.live('EventService', 'WatchEvents', () => ({ since: new Date().toISOString() }), refresh);
}

// Timeline: the cluster's events on a time axis and in a list, filtered by
// node and kind, followed live.
function viewTimeline(root, scope) {
  const node = h('input', { placeholder: 'node', 'aria-label': 'Filter events by node' });
  const kind = h('input', { placeholder: 'kind', 'aria-label': 'Filter events by kind' });
  const axis = h('div', { class: 'axis', role: 'img', 'aria-label': 'Events on a time axis' });
  const body = h('tbody');
  let evs = [], sub = null;
  root.append(h('h1', {}, 'Timeline'), h('div', { class: 'filters', role: 'search' }, node, kind,
    h('button', { type: 'button', 'aria-label': 'Apply event filters', onclick: () => start() }, 'Filter')), axis,
    h('table', { 'aria-label': 'Events' }, h('thead', {}, h('tr', {}, ['Time', 'Node', 'Kind', 'Message'].map((c) => h('th', { scope: 'col' }, c)))), body));
  const kindClass = (t) => t.split(/[._-]/)[0];
  const draw = () => {
    const now = Date.now(), from = evs.length ? Math.min(...evs.map((e) => new Date(e.time).getTime())) : now - 3600e3;
    const span = Math.max(1000, now - from);
    axis.replaceChildren(...evs.map((e) => {
      const m = h('div', { class: 'mark ' + kindClass(e.type), title: fmtTime(e.time) + ' ' + e.node + ' ' + e.type + ': ' + e.message });
      m.style.left = (100 * (new Date(e.time).getTime() - from) / span) + '%';
      return m;
    }));
    body.replaceChildren(...evs.slice().reverse().slice(0, 300).map((e) => h('tr', { 'data-kind': e.type, 'data-node': e.node },
      h('td', {}, fmtTime(e.time)), h('td', {}, e.node), h('td', {}, e.type), h('td', {}, e.message))));
  };
  const redraw = scope.throttle(draw);
  function start() {
    if (sub) sub.close();
    sub = new Scope();
    const own = sub;
    scope.ctl.signal.addEventListener('abort', () => own.close());
    evs = [];
    const seen = new Set();
    const q = { node: node.value.trim(), type: kind.value.trim(), since: new Date(Date.now() - 3600e3).toISOString() };
    own.live('EventService', 'WatchEvents', () => ({ ...q, since: evs.length ? evs[evs.length - 1].time : q.since }), (e) => {
      // A reconnect resends the events of its since instant: drop them.
      const key = e.node + '/' + e.seq;
      if (seen.has(key)) return;
      seen.add(key);
      // Rings of several nodes arrive interleaved: keep them in time order.
      const at = new Date(e.time).getTime();
      let i = evs.length;
      while (i > 0 && new Date(evs[i - 1].time).getTime() > at) i--;
      evs.splice(i, 0, e);
      if (evs.length > 1000) evs.shift();
      redraw();
    });
    draw();
  }
  start();
}
