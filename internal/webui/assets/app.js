// Login, navigation and routing of the taskd console.
'use strict';

let current = null;

function logout(why) {
  session.clear();
  window.taskdEarly = null;
  if (current) { current.close(); current = null; }
  document.getElementById('view').hidden = true;
  document.getElementById('nav').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('who').textContent = '';
  document.getElementById('login').hidden = false;
  document.getElementById('login-error').textContent = why || '';
}

function route() {
  if (!session.token) { logout(); return; }
  document.getElementById('login').hidden = true;
  document.getElementById('nav').hidden = false;
  document.getElementById('logout').hidden = false;
  document.getElementById('who').textContent = session.id + ' (' + session.role + ')';
  const [, name, arg] = (location.hash || '#/cluster').split('/');
  if (current) current.close();
  current = new Scope();
  const root = document.getElementById('view');
  root.hidden = false;
  root.replaceChildren();
  root.dataset.view = name;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === name || (name === 'task' && a.dataset.view === 'tasks'));
  const views = { cluster: viewCluster, tasks: viewTasks, runners: viewRunners, vips: viewVIPs, timeline: viewTimeline };
  if (name === 'task' && arg) viewTask(root, current, decodeURIComponent(arg));
  else (views[name] || viewCluster)(root, current);
  // The early call (early.js) is for the first view of a page load: the
  // tasks view has taken it by now (its first read starts at once), and
  // no later view may take it.
  window.taskdEarly = null;
}

document.getElementById('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = document.getElementById('token');
  const token = input.value.trim();
  try {
    const me = await call('TokenService', 'WhoAmI', {}, token);
    session.save(token, me.tokenId, me.role);
    input.value = '';
    document.getElementById('login-error').textContent = '';
    route();
  } catch (e) {
    document.getElementById('login-error').textContent = e.message;
  }
});
document.getElementById('logout').addEventListener('click', () => logout());
window.addEventListener('hashchange', route);
route();
