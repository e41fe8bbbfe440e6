// Flywheel dashboard: a little plain JavaScript on server-rendered pages.
// Live status on the executions list, the live log, timeline and gallery of
// an execution (Server-Sent Events), video seeking, and the screenshot viewer.
// It only reads the JSON API (with the session cookie); changes go through
// the pages' forms.
(function () {
  'use strict';

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function text(el, value) { if (el) el.textContent = value; }
  function duration(ms) {
    if (ms === null || ms === undefined) return '–';
    if (ms < 1000) return ms + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(1) + ' s';
    return Math.floor(ms / 60000) + 'm' + String(Math.floor((ms % 60000) / 1000)).padStart(2, '0') + 's';
  }
  function clock(ts) { return ts ? ts.substring(11, 19) : '–'; }
  function shortTime(ts) { return ts ? ts.substring(0, 19).replace('T', ' ') : '–'; }
  function shortId(id) { return id.substring(id.length - 8); }
  // Artifact URLs as paths on this site (the page only loads from its own origin).
  function local(url) {
    try { var u = new URL(url, location.href); return u.pathname + u.search; } catch (e) { return url; }
  }
  function setStatus(el, status, code) {
    if (!el) return;
    el.className = el.className.replace(/status-\w+/, 'status-' + status);
    el.setAttribute('data-status', status);
    el.textContent = status + (code ? ' · ' + code : '');
  }
  var TERMINAL = { completed: true, failed: true };

  // Reads the API; after a 401 (signed out, session over) it stops asking.
  var signedOut = false;
  function getJson(url) {
    if (signedOut) return Promise.reject(new Error('signed out'));
    return fetch(url, { credentials: 'same-origin' }).then(function (r) {
      if (r.status === 401) signedOut = true;
      if (!r.ok) throw new Error(url + ': ' + r.status);
      return r.json();
    });
  }

  // The screenshot viewer.
  document.addEventListener('click', function (event) {
    var thumb = event.target.closest && event.target.closest('[data-full]');
    if (!thumb) return;
    var viewer = $('#viewer');
    $('img', viewer).src = thumb.getAttribute('data-full');
    viewer.showModal();
  });

  // Seeking the video to an action.
  document.addEventListener('click', function (event) {
    var button = event.target.closest && event.target.closest('[data-offset]');
    if (!button) return;
    var video = $('video');
    if (!video) return;
    video.currentTime = Math.max(0, parseFloat(button.getAttribute('data-offset')) || 0);
    video.play().catch(function () {});
    video.focus();
  });

  // The executions list: every two seconds (while the tab is visible), the
  // newest executions of this workflow and period update the rows on screen;
  // rows older than those are asked for one by one while they are active;
  // on the first page, a new execution that passes the filters is announced.
  var list = $('table[data-live-list]');
  if (list) {
    var query = list.getAttribute('data-live-list');
    var statusFilter = list.getAttribute('data-status-filter');
    var firstPage = list.hasAttribute('data-first-page');
    var topRow = $('tbody tr', list);
    var newestOnScreen = topRow ? topRow.getAttribute('data-id') : '';
    var updateRow = function (row, e) {
      setStatus($('[data-field=status]', row), e.status, e.error && e.error.code);
      text($('[data-field=duration]', row), duration(e.duration_ms));
      text($('[data-field=counts]', row), e.n_steps + ' · ' + e.n_agent_actions);
    };
    var active = function (row) { return !TERMINAL[$('[data-field=status]', row).getAttribute('data-status')]; };
    var timer = setInterval(function () {
      if (signedOut) { clearInterval(timer); return; }
      if (document.hidden) return;
      getJson('/api/executions?' + query).then(function (page) {
        var seen = {};
        var fresh = false;
        page.items.forEach(function (e) {
          seen[e.execution_uuid] = true;
          var row = $('tr[data-id="' + e.execution_uuid + '"]', list);
          if (row) updateRow(row, e);
          // UUIDv7s sort by creation time.
          else if (firstPage && e.execution_uuid > newestOnScreen && (!statusFilter || e.status === statusFilter)) fresh = true;
        });
        var note = $('[data-live-note]');
        if (note && fresh) note.hidden = false;
        $all('tbody tr', list).filter(function (row) { return active(row) && !seen[row.getAttribute('data-id')]; })
          .slice(0, 10)
          .forEach(function (row) {
            getJson('/api/executions/' + row.getAttribute('data-id')).then(function (e) { updateRow(row, e); }).catch(function () {});
          });
      }).catch(function () {});
    }, 2000);
  }

  // One execution: the live log, and everything else refreshed as it goes.
  var page = $('[data-execution]');
  if (page) {
    var id = page.getAttribute('data-execution');
    // Seconds since the epoch when the video starts: when the agent starts.
    var zero = parseFloat(page.getAttribute('data-video-zero')) || 0;
    var log = $('[data-field=log]');
    var timeline = $('[data-field=timeline]');
    var lastSeq = parseInt(log.getAttribute('data-last-seq'), 10) || 0;
    // One refresh at a time; a request during one runs once it is done.
    var inFlight = false, again = false;

    var thumb = function (url, name, label) {
      var b = document.createElement('button');
      b.type = 'button'; b.className = 'thumb';
      b.setAttribute('data-full', url); b.setAttribute('data-name', name);
      b.setAttribute('aria-label', label);
      var img = document.createElement('img');
      img.src = url; img.alt = name; img.loading = 'lazy';
      b.appendChild(img);
      return b;
    };

    var show = function (e, artifacts) {
      setStatus($('[data-field=status]'), e.status);
      text($('[data-field=started_at]'), shortTime(e.started_at));
      text($('[data-field=finished_at]'), shortTime(e.finished_at));
      text($('[data-field=duration]'), duration(e.duration_ms));
      text($('[data-field=n_steps]'), e.n_steps);
      text($('[data-field=n_agent_actions]'), e.n_agent_actions);
      text($('[data-field=n_screenshots]'), e.n_screenshots);
      text($('[data-field=usage]'), e.usage.input_tokens + ' in · ' + e.usage.output_tokens + ' out');
      text($('[data-field=output]'), e.output ? JSON.stringify(e.output, null, 2) : '–');
      var stop = $('[data-field=stop]');
      if (stop) stop.hidden = !!TERMINAL[e.status];
      var retried = $('[data-field=retried_by]');
      if (retried && e.retried_by && !retried.firstChild) {
        var a = document.createElement('a');
        a.href = '/executions/' + e.retried_by;
        var code = document.createElement('code'); code.textContent = shortId(e.retried_by);
        a.appendChild(code);
        retried.appendChild(document.createTextNode(' · retried by '));
        retried.appendChild(a);
      }
      var screenshots = artifacts.filter(function (a) { return a.kind === 'screenshot'; });
      var error = $('[data-field=error]');
      if (e.error) {
        error.hidden = false;
        text($('[data-field=error_code]'), e.error.code);
        text($('[data-field=error_message]'), e.error.message);
        var failure = screenshots.filter(function (a) { return a.name.indexOf('failure') >= 0; }).pop();
        if (failure && !$('[data-failure]', error)) {
          var shot = thumb(local(failure.url), failure.name, 'Enlarge the screenshot of the failure');
          shot.setAttribute('data-failure', '');
          error.appendChild(shot);
        }
      }
      var gallery = $('[data-field=gallery]');
      screenshots.forEach(function (a) {
        if ($('[data-name="' + CSS.escape(a.name) + '"]', gallery)) return;
        var empty = $('[data-empty]', gallery);
        if (empty) empty.remove();
        gallery.appendChild(thumb(local(a.url), a.name, 'Enlarge ' + a.name));
      });
      var holder = $('[data-field=video]');
      if (e.video_url && !$('video', holder)) {
        holder.textContent = '';
        var v = document.createElement('video');
        v.controls = true; v.preload = 'metadata'; v.src = local(e.video_url);
        holder.appendChild(v);
      }
    };

    var refresh = function () {
      if (inFlight) { again = true; return; }
      inFlight = true;
      Promise.all([getJson('/api/executions/' + id), getJson('/api/executions/' + id + '/artifacts')])
        .then(function (both) { show(both[0], both[1].items || []); })
        .catch(function () {})
        .then(function () {
          inFlight = false;
          if (again) { again = false; setTimeout(refresh, 150); }
        });
    };

    var append = function (entry) {
      if (/^agent .* started$/.test(entry.message)) zero = Date.parse(entry.ts) / 1000;
      var li = document.createElement('li');
      li.className = 'lvl-' + entry.level;
      var t = document.createElement('time'); t.textContent = clock(entry.ts);
      var k = document.createElement('span'); k.className = 'kind'; k.textContent = entry.kind;
      li.appendChild(t); li.appendChild(document.createTextNode(' ')); li.appendChild(k);
      li.appendChild(document.createTextNode(' ' + entry.message));
      var atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
      log.appendChild(li);
      if (atBottom) log.scrollTop = log.scrollHeight;
      if (entry.kind === 'action' && entry.data) {
        var empty = $('[data-empty]', timeline);
        if (empty) empty.remove();
        var item = document.createElement('li');
        var b = document.createElement('button');
        b.type = 'button'; b.className = 'link';
        var start = (Date.parse(entry.ts) - (entry.data.duration_ms || 0)) / 1000;
        b.setAttribute('data-offset', Math.max(0, start - zero).toFixed(2));
        b.title = 'Show this moment in the video';
        b.textContent = clock(entry.ts) + ' ' + entry.data.action + ' ' + entry.data.outcome;
        item.appendChild(b);
        if (entry.data.reasoning) {
          var p = document.createElement('p'); p.className = 'muted small'; p.textContent = entry.data.reasoning;
          item.appendChild(p);
        }
        timeline.appendChild(item);
      }
    };

    if (window.EventSource) {
      var source = new EventSource('/api/executions/' + id + '/events?after=' + lastSeq);
      ['status', 'step', 'log', 'action', 'output', 'artifact', 'error'].forEach(function (kind) {
        source.addEventListener(kind, function (event) {
          var entry = JSON.parse(event.data);
          if (entry.seq <= lastSeq) return;
          lastSeq = entry.seq;
          append(entry);
          if (kind !== 'log') refresh();
        });
      });
      source.addEventListener('end', function () { source.close(); refresh(); });
    }
  }
})();
