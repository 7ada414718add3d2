// Inlined into index.html's head (webui.go), so it runs while the page is
// still parsed, before the console's other files arrive: a page opened on
// the task table, in a tab that already holds a token, sends the table's
// first ListTasks at once. The tasks view takes the answer (callEarly in
// api.js) only if it would have sent this very call; it asks again if not.
// The request here must stay the view's first one (views.js, viewTasks).
'use strict';
(() => {
  const token = sessionStorage.getItem('taskd.token');
  if (!token || (location.hash || '').split('/')[1] !== 'tasks') return;
  const path = '/taskd.v1.TaskService/ListTasks';
  const body = JSON.stringify({ status: '', type: '', node: '', key: '', limit: 50, offset: 0, newestFirst: true, explain: true });
  const reply = fetch(path, { method: 'POST', body,
    headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1', 'Authorization': 'Bearer ' + token } });
  reply.catch(() => {}); // a failure is the view's to show, when it takes the call
  window.taskdEarly = { path, body, token, reply };
})();
