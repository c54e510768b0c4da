// hemostat dashboard: renders the JSON API, follows the live feed, and sends the actions.
// Plain JavaScript, no framework and no build step. Every value from the server goes into the
// page as text (textContent), never as markup, so an event cannot inject anything.
'use strict';

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const TOKEN_KEY = 'hemostat-dashboard-token';
  const ACTOR_KEY = 'hemostat-dashboard-actor';
  const state = {
    readOnly: true,
    filter: {},
    redisUp: true,
    feedOpen: false,
    apiDown: false,
  };

  // Builds an element: el('td', {class: 'x'}, 'text', child, ...).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function replace(target, ...children) {
    target.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  }

  // ---- formatting -----------------------------------------------------------------------

  function ago(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return '';
    const s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function when(iso) {
    if (!iso) return el('span', { class: 'muted' }, '—');
    return el('time', { datetime: iso, title: iso }, ago(iso));
  }

  function duration(secs) {
    if (secs === null || secs === undefined) return '—';
    if (secs < 60) return secs.toFixed(secs < 10 ? 1 : 0) + ' s';
    if (secs < 3600) return Math.round(secs / 60) + ' min';
    if (secs < 86400) return (secs / 3600).toFixed(1) + ' h';
    return (secs / 86400).toFixed(1) + ' d';
  }

  function bytes(n) {
    if (n === null || n === undefined) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i === 0 ? 0 : 1) + ' ' + units[i];
  }

  // A status shown as an icon and a word, never by colour alone.
  const TONES = {
    ok: ['ok', '✔'], running: ['ok', '▶'], up: ['ok', '✔'], success: ['ok', '✔'],
    closed: ['ok', '✔'], sent: ['ok', '✉'], info: ['info', 'ℹ'],
    warning: ['warn', '⚠'], degraded: ['warn', '⚠'], rejected: ['warn', '✋'],
    skipped: ['muted', '↷'], superseded: ['muted', '↩'], folded: ['muted', '≡'], silenced: ['muted', '∅'],
    paused: ['warn', '‖'], 'paused by a person': ['muted', '‖'],
    'stopped by a person': ['muted', '■'], exited: ['bad', '■'],
    critical: ['bad', '✖'], unhealthy: ['bad', '✖'], failed: ['bad', '✖'], down: ['bad', '✖'],
    open: ['bad', '⚠'], dead: ['bad', '✖'], unknown: ['muted', '?'],
  };

  function badge(word, label) {
    const [tone, icon] = TONES[word] || ['muted', '•'];
    return el('span', { class: 'badge ' + tone },
      el('span', { 'aria-hidden': 'true' }, icon + ' '), label || word);
  }

  // ---- sparklines (inline SVG) ----------------------------------------------------------

  function sparkline(points, label, fmt) {
    const w = 96, h = 28, pad = 2;
    if (!points || points.length === 0) return el('span', { class: 'muted' }, 'no samples');
    const vs = points.map((p) => p.v);
    const min = Math.min(...vs), max = Math.max(...vs);
    const span = max - min || 1;
    const step = points.length > 1 ? (w - 2 * pad) / (points.length - 1) : 0;
    const xy = vs.map((v, i) =>
      (pad + i * step).toFixed(1) + ',' + (h - pad - ((v - min) / span) * (h - 2 * pad)).toFixed(1));
    const last = vs[vs.length - 1];
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
    svg.setAttribute('width', w);
    svg.setAttribute('height', h);
    svg.setAttribute('class', 'spark');
    svg.setAttribute('role', 'img');
    const title = label + ': ' + points.length + ' samples, latest ' + fmt(last) +
      ', min ' + fmt(min) + ', max ' + fmt(max);
    svg.setAttribute('aria-label', title);
    const t = document.createElementNS(NS, 'title');
    t.textContent = title;
    svg.append(t);
    const line = document.createElementNS(NS, 'polyline');
    line.setAttribute('points', xy.join(' '));
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', 'currentColor');
    line.setAttribute('stroke-width', '1.5');
    svg.append(line);
    return el('span', { class: 'sparkcell' }, svg, el('span', { class: 'small' }, fmt(last)));
  }

  // ---- API ------------------------------------------------------------------------------

  async function api(path, options) {
    let res;
    try {
      const token = sessionStorage.getItem(TOKEN_KEY);
      const headers = { Accept: 'application/json' };
      // With a read token configured on the dashboard, reads need it (or the action token).
      if (token) headers.Authorization = 'Bearer ' + token;
      res = await fetch(path, Object.assign({ headers }, options));
    } catch (e) {
      throw new Error('the dashboard is unreachable (' + e.message + ')');
    }
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) {
      const err = new Error((body && body.error) || ('HTTP ' + res.status));
      err.status = res.status;
      throw err;
    }
    return body;
  }

  function showBanner(text) {
    const b = $('#banner');
    if (text) { b.textContent = text; b.hidden = false; } else { b.hidden = true; }
  }

  // Each section loads on its own: one failing keeps the others, and what it showed before.
  const loaders = {
    overview: () => api('/api/overview').then(renderOverview),
    containers: () => api('/api/containers').then(renderContainers),
    timeline: () => api('/api/timeline?' + new URLSearchParams(state.filter)).then(renderTimeline),
    remediations: () => api('/api/remediations').then(renderRemediations),
    alerts: () => api('/api/alerts').then(renderAlerts),
    agents: () => api('/api/agents').then(renderAgents),
    proposals: () => api('/api/proposals').then(renderProposals),
    maintenance: () => api('/api/maintenance').then(renderWindows),
  };

  async function load(names) {
    const results = await Promise.allSettled(names.map((n) => loaders[n]()));
    const failed = results.filter((r) => r.status === 'rejected');
    state.apiDown = failed.length > 0;
    if (failed.length) {
      showBanner('Some data could not be loaded: ' + failed[0].reason.message +
        '. Showing the last data received; retrying.');
    } else {
      showBanner('');
    }
    updateConn();
  }

  const loadAll = () => load(Object.keys(loaders));

  // Bursts of live events cause one reload per section, not one per event.
  const pending = new Set();
  let pendingTimer = null;
  function reloadSoon(names) {
    names.forEach((n) => pending.add(n));
    if (pendingTimer) return;
    pendingTimer = setTimeout(() => {
      const list = [...pending];
      pending.clear();
      pendingTimer = null;
      load(list);
    }, 800);
  }

  // ---- rendering ------------------------------------------------------------------------

  function card(label, value, detail, tone) {
    return el('div', { class: 'card' + (tone ? ' ' + tone : '') },
      el('div', { class: 'card-label' }, label),
      el('div', { class: 'card-value' }, value),
      detail ? el('div', { class: 'card-detail small' }, detail) : null);
  }

  function renderOverview(o) {
    const rate = o.success_rate_24h === null ? '—' : Math.round(o.success_rate_24h * 100) + ' %';
    replace($('#overview-cards'),
      card('Containers monitored', o.containers_monitored,
        o.hosts.length + ' host' + (o.hosts.length === 1 ? '' : 's')),
      card('Unhealthy now', o.unhealthy_now,
        o.unhealthy_now ? o.unhealthy.join(', ') : 'none', o.unhealthy_now ? 'bad' : 'ok'),
      card('Remediations (24 h)', o.remediations_24h,
        o.outcomes_24h.rejected + ' refused, ' + o.outcomes_24h.skipped + ' skipped, ' +
        o.outcomes_24h.superseded + ' overtaken by a person'),
      card('Success rate (24 h)', rate,
        o.outcomes_24h.success + ' succeeded, ' + o.outcomes_24h.failed + ' failed',
        o.outcomes_24h.failed ? 'warn' : null),
      card('False alarms (24 h)', o.false_alarms_24h),
      card('Mean time to recovery', duration(o.mean_time_to_recovery_secs),
        'detection → verified, ' + o.recoveries_measured + ' measured'),
      card('Agents alive', o.agents_alive + ' / ' + o.agents_total, null,
        o.agents_alive < o.agents_total ? 'bad' : 'ok'),
      card('Breakers open', o.breakers_open, null, o.breakers_open ? 'bad' : null));
    $('#overview-note').textContent = (o.partial
      ? 'Counts cover only the newest entries read from each stream (raise HEMOSTAT_DASHBOARD_HISTORY to look further back). '
      : '') + 'Updated ' + new Date(o.generated_at).toLocaleTimeString() + '.';
  }

  function renderContainers(d) {
    const rows = d.containers.map((c) => el('tr', { dataset: { host: c.host, container: c.name } },
      el('th', { scope: 'row' }, el('span', { class: 'name' }, c.name),
        el('span', { class: 'muted small block' }, c.host + (c.image ? ' · ' + c.image : '')),
        c.protected ? el('span', { class: 'small block' }, '◆ protected') : null,
        el('button', { type: 'button', class: 'small-btn logs-btn', onclick: () => showLogs(c.host, c.name) },
          'Logs', el('span', { class: 'visually-hidden' }, ' of ' + c.name)),
        c.protected ? null : el('button', { type: 'button', class: 'small-btn restart-btn', onclick: () => restartNow(c.host, c.name) },
          'Restart now', el('span', { class: 'visually-hidden' }, ' ' + c.name))),
      el('td', {}, badge(c.state)),
      el('td', {}, badge(c.health, c.unhealthy && c.problem ? 'unhealthy: ' + c.problem : c.health),
        c.problem_summary && c.unhealthy ? el('span', { class: 'small block' }, c.problem_summary) : null),
      el('td', {}, sparkline(c.cpu, 'CPU of ' + c.name, (v) => v.toFixed(1) + ' %')),
      el('td', {}, sparkline(c.memory, 'Memory of ' + c.name, bytes),
        c.memory_limit_bytes ? el('span', { class: 'muted small block' }, 'limit ' + bytes(c.memory_limit_bytes)) : null),
      el('td', {}, c.restart_count === null ? '—' : String(c.restart_count),
        el('span', { class: 'muted small block' }, 'hemostat: ' + c.remediations_24h + ' in 24 h')),
      el('td', {}, c.breaker.open
        ? [badge('open'),
          c.breaker.closes_in_secs ? el('span', { class: 'small block' }, 'closes in ' + duration(c.breaker.closes_in_secs)) : null,
          el('button', { type: 'button', class: 'small-btn', onclick: () => prefillReset(c.host, c.name) },
            'Reset…', el('span', { class: 'visually-hidden' }, ' breaker of ' + c.name))]
        : badge('closed')),
      el('td', {}, c.last_action
        ? [c.last_action.action + (c.last_action.dry_run ? ' (dry run) ' : ' '), badge(c.last_action.outcome),
          el('span', { class: 'small block' }, when(c.last_action.at))]
        : el('span', { class: 'muted' }, 'none'))));
    replace($('#containers-table tbody'),
      rows.length ? rows : el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No containers seen yet.')));
  }

  // Asks the container's own host for its log tail; the lines are shown as text only.
  async function showLogs(host, name) {
    const panel = $('#logs');
    panel.hidden = false;
    $('#logs-title').textContent = 'Logs of ' + name + ' on ' + host;
    const pre = $('#logs-text');
    pre.textContent = 'Asking ' + host + '…';
    const path = '/api/hosts/' + encodeURIComponent(host) + '/containers/' +
      encodeURIComponent(name) + '/logs?tail=100';
    try {
      const reply = await api(path);
      const r = reply.result;
      pre.textContent = r.lines.length ? r.lines.join('\n') : '(no lines)';
      $('#logs-note').textContent = r.truncated ? r.dropped + ' older lines left out.' : '';
    } catch (e) {
      pre.textContent = '';
      $('#logs-note').textContent = e.message;
    }
  }

  function timelineEntry(item, live) {
    const json = JSON.stringify(item.envelope, null, 2);
    return el('li', { class: 'event sev-' + item.severity + (live ? ' live' : ''),
      dataset: { id: item.id, live: live ? 'sse' : 'api', eventType: item.event_type } },
      el('details', {},
        el('summary', {},
          when(item.timestamp), ' ',
          badge(item.severity), ' ',
          el('code', {}, item.event_type), ' ',
          el('span', { class: 'muted' }, item.host + (item.container ? '/' + item.container : '')), ' ',
          el('span', { class: 'summary' }, item.summary),
          live ? el('span', { class: 'new' }, ' new') : null),
        el('pre', { class: 'envelope', tabindex: '0', 'aria-label': 'Full envelope' }, json)));
  }

  function renderTimeline(d) {
    replace($('#timeline-list'), d.items.length
      ? d.items.map((i) => timelineEntry(i, false))
      : el('li', { class: 'muted' }, 'No events match.'));
    $('#timeline-count').textContent = d.count + ' event' + (d.count === 1 ? '' : 's') +
      ' shown (newest first; up to ' + d.limit + ').';
  }

  const SEVERITY_RANK = { info: 0, warning: 1, critical: 2 };
  function matchesFilter(item) {
    const f = state.filter;
    if (item.noise && !f.noise && f.kind !== item.event_type) return false;
    if (f.host && f.host !== item.host) return false;
    if (f.container && !(item.container || '').toLowerCase().includes(f.container.toLowerCase())) return false;
    if (f.kind && f.kind !== item.event_type && f.kind !== item.kind) return false;
    if (f.severity && SEVERITY_RANK[item.severity] < SEVERITY_RANK[f.severity]) return false;
    return true;
  }

  function renderRemediations(d) {
    const rows = d.remediations.map((r) => el('tr', {},
      el('td', {}, when(r.at)),
      el('td', {}, (r.container || 'host') , el('span', { class: 'muted small block' }, r.host)),
      el('td', {}, r.action),
      el('td', {}, badge(r.outcome), r.guard ? el('span', { class: 'muted small block' }, 'guard: ' + r.guard) : null),
      el('td', { class: 'wrap' }, r.reason, r.verification ? el('span', { class: 'muted small block' }, r.verification) : null),
      el('td', {}, r.analysis_method || '—', r.fallback_reason ? el('span', { class: 'muted small block' }, r.fallback_reason) : null,
        r.root_cause ? el('span', { class: 'small block wrap' }, r.root_cause) : null),
      el('td', {}, r.confidence === null ? '—' : r.confidence.toFixed(2)),
      el('td', {}, r.duration_ms + ' ms'),
      el('td', {}, r.dry_run ? 'yes' : 'no')));
    replace($('#remediations-table tbody'),
      rows.length ? rows : el('tr', {}, el('td', { colspan: 9, class: 'muted' }, 'No remediations yet.')));
    const audit = d.audit.map((a) => {
      const f = a.fields || {};
      let text = a.event_type;
      if (a.event_type === 'breaker_reset') text = 'breaker of ' + f.host + '/' + f.container + ' reset by ' + f.by;
      else if (a.event_type === 'silence_added' && f.silence) text = 'silence ' + f.silence.id + ' added by ' + f.silence.created_by;
      else if (a.event_type === 'silence_expired') text = 'silence ' + f.silence_id + ' expired by ' + f.by;
      else if (f.envelope && f.envelope.data && f.envelope.data.summary) text = a.event_type + ': ' + f.envelope.data.summary;
      return el('li', { dataset: { eventType: a.event_type } }, when(a.at), ' ', text);
    });
    replace($('#audit-list'), audit.length ? audit : el('li', { class: 'muted' }, 'None.'));
  }

  function renderAlerts(d) {
    replace($('#alert-counts'), Object.entries(d.decisions).map(([k, v]) =>
      card(k, v, null, k === 'failed' && v ? 'bad' : null)));
    const silences = d.silences.map((s) => el('li', { dataset: { silence: s.id } },
      el('strong', {}, 'host ' + (s.host || '*') + ', container ' + (s.container || '*') + ', kind ' + (s.kind || '*')),
      ' until ', el('time', { datetime: s.expires_at }, new Date(s.expires_at).toLocaleString()),
      ' by ', s.created_by || '?',
      s.comment ? ' — ' + s.comment : '', ' ',
      el('button', { type: 'button', class: 'small-btn', onclick: () => expireSilence(s.id) },
        'Expire', el('span', { class: 'visually-hidden' }, ' silence ' + s.id))));
    replace($('#silence-list'), silences.length ? silences : el('li', { class: 'muted' }, 'No active silences.'));
    const esc = d.escalations.slice(0, 20).map((e) => el('li', {}, when(e.timestamp), ' ', badge(e.severity), ' ',
      el('code', {}, e.kind), ' ', e.summary));
    replace($('#escalation-list'), esc.length ? esc : el('li', { class: 'muted' }, 'None.'));
    const rows = d.notifications.slice(0, 100).map((n) => el('tr', {},
      el('td', {}, when(n.at)), el('td', {}, badge(n.decision)), el('td', {}, n.sink || '—'),
      el('td', {}, n.fingerprint), el('td', { class: 'wrap' }, n.detail)));
    replace($('#notifications-table tbody'),
      rows.length ? rows : el('tr', {}, el('td', { colspan: 5, class: 'muted' }, 'No notifications yet.')));
  }

  function renderProposals(d) {
    const items = d.proposals.slice(0, 50).map((p) => el('li', { dataset: { proposal: p.id } },
      badge(p.state), ' ', el('strong', {}, p.action + ' ' + p.container), ' on ', p.host,
      ' — ', p.root_cause,
      el('span', { class: 'muted small block' }, p.reason +
        (p.expires_at ? ' · expires ' + new Date(p.expires_at).toLocaleTimeString() : '') +
        (p.decided_by ? ' · by ' + p.decided_by : '')),
      p.state === 'pending' ? [
        el('button', { type: 'button', class: 'small-btn', onclick: () => decide(p, 'approve') },
          'Approve', el('span', { class: 'visually-hidden' }, ' ' + p.action + ' of ' + p.container)), ' ',
        el('button', { type: 'button', class: 'small-btn secondary', onclick: () => decide(p, 'decline') },
          'Decline', el('span', { class: 'visually-hidden' }, ' ' + p.action + ' of ' + p.container))] : null));
    replace($('#proposal-list'), items.length ? items : el('li', { class: 'muted' }, 'Nothing waits for approval.'));
  }

  async function decide(p, verdict) {
    try {
      const r = await act('POST', '/api/proposals/' + encodeURIComponent(p.host) + '/' +
        encodeURIComponent(p.id) + '/' + verdict);
      say('✔ ' + p.action + ' of ' + p.container + ' ' + r.decision + ': ' + r.note + '.', true);
      reloadSoon(['proposals', 'remediations', 'containers']);
    } catch (e) { refused(e); }
  }

  function renderWindows(d) {
    const items = d.windows.map((w) => el('li', { dataset: { window: w.window.id } },
      badge(w.active ? 'active' : 'scheduled'), ' ', el('strong', {}, 'pauses ' + w.window.pauses), ' ',
      w.describe, w.window.comment ? ' — ' + w.window.comment : '',
      el('span', { class: 'muted small block' }, [
        w.window.scope.host ? 'host ' + w.window.scope.host : null,
        w.window.scope.container ? 'containers ' + w.window.scope.container : null,
        w.window.scope.label ? 'label ' + w.window.scope.label : null,
        w.window.scope.compose_project ? 'project ' + w.window.scope.compose_project : null,
      ].filter(Boolean).join(', ') || 'everything'),
      ' ', el('button', { type: 'button', class: 'small-btn', onclick: () => endWindow(w.window.id) },
        'End now', el('span', { class: 'visually-hidden' }, ' window ' + w.window.id))));
    replace($('#window-list'), items.length ? items : el('li', { class: 'muted' }, 'No maintenance windows.'));
  }

  async function endWindow(id) {
    try {
      await act('DELETE', '/api/maintenance/' + encodeURIComponent(id));
      say('✔ Maintenance window ' + id + ' ended.', true);
      reloadSoon(['maintenance']);
    } catch (e) { refused(e); }
  }

  async function restartNow(host, name) {
    try {
      const r = await act('POST', '/api/restart', { host, container: name });
      say('✔ Restart of ' + name + ' requested (' + r.request_id + '): ' + r.note + '.', true);
      reloadSoon(['remediations', 'containers']);
    } catch (e) { refused(e); }
  }

  function renderAgents(d) {
    const rows = d.agents.map((a) => el('tr', { dataset: { instance: a.instance } },
      el('th', { scope: 'row' }, a.agent, el('span', { class: 'muted small block' }, a.instance)),
      el('td', {}, badge(a.status)),
      el('td', {}, a.host), el('td', {}, a.version), el('td', {}, duration(a.uptime_secs)),
      el('td', {}, when(a.last_seen), el('span', { class: 'muted small block' }, 'every ' + a.interval_secs + ' s')),
      el('td', { class: 'wrap' }, a.degraded.length ? a.degraded.join('; ') : '—')));
    replace($('#agents-table tbody'),
      rows.length ? rows : el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'No agent has sent a heartbeat.')));
  }

  // ---- live feed ------------------------------------------------------------------------

  function updateConn() {
    const c = $('#conn');
    let s, text;
    if (!state.feedOpen) { s = 'reconnecting'; text = 'reconnecting…'; }
    else if (!state.redisUp) { s = 'reconnecting'; text = 'Redis unreachable, reconnecting…'; }
    else { s = 'live'; text = 'live'; }
    c.dataset.state = s;
    $('#conn-text').textContent = text;
  }

  const SECTIONS_FOR = {
    container_metrics: ['containers'], host_metrics: [], heartbeat: ['agents'],
  };

  function onEvent(item) {
    if (matchesFilter(item) && !document.querySelector('#timeline-list [data-id="' + CSS.escape(item.id) + '"]')) {
      const list = $('#timeline-list');
      const empty = list.querySelector('li.muted');
      if (empty) empty.remove();
      list.prepend(timelineEntry(item, true));
      while (list.children.length > 1000) list.lastElementChild.remove();
    }
    reloadSoon(SECTIONS_FOR[item.event_type] ||
      ['overview', 'containers', 'remediations', 'alerts', 'proposals']);
  }

  let source = null;
  function connect() {
    if (source) source.close();
    // EventSource cannot send headers: the token, when there is one, goes in the query.
    const token = sessionStorage.getItem(TOKEN_KEY);
    source = new EventSource('/api/events' + (token ? '?access_token=' + encodeURIComponent(token) : ''));
    source.addEventListener('open', () => {
      const wasDown = !state.feedOpen;
      state.feedOpen = true;
      updateConn();
      // Catch up on whatever happened while the feed was away.
      if (wasDown) loadAll();
    });
    source.addEventListener('status', (e) => {
      let up = true;
      try { up = JSON.parse(e.data).redis === 'up'; } catch (err) { /* keep */ }
      const cameBack = up && !state.redisUp;
      state.redisUp = up;
      updateConn();
      if (cameBack) loadAll();
    });
    source.addEventListener('event', (e) => {
      try { onEvent(JSON.parse(e.data)); } catch (err) { /* a malformed message is skipped */ }
    });
    source.addEventListener('resync', () => loadAll());
    source.addEventListener('error', () => {
      state.feedOpen = false;
      updateConn();
      // EventSource retries by itself unless the server answered with an error status.
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
    });
  }

  // ---- actions --------------------------------------------------------------------------

  function say(text, ok) {
    const r = $('#action-result');
    r.textContent = text;
    r.dataset.ok = ok ? 'true' : 'false';
    r.className = 'result ' + (ok ? 'ok' : 'bad');
  }

  async function act(method, path, body) {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    const actor = sessionStorage.getItem(ACTOR_KEY);
    if (actor) headers['X-Hemostat-Actor'] = actor;
    if (body) headers['Content-Type'] = 'application/json';
    return api(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  }

  function refused(e) {
    const prefix = e.status === 403 ? 'Refused (read-only): ' : e.status === 401 ? 'Refused: ' : 'Failed: ';
    say('✖ ' + prefix + e.message, false);
  }

  function prefillReset(host, name) {
    const f = $('#reset-form');
    f.elements.host.value = host;
    f.elements.container.value = name;
    location.hash = '#actions';
    f.querySelector('button[type=submit]').focus();
  }

  async function expireSilence(id) {
    try {
      await act('DELETE', '/api/silences/' + encodeURIComponent(id));
      say('✔ Silence ' + id + ' expired.', true);
      reloadSoon(['alerts', 'remediations']);
    } catch (e) { refused(e); }
  }

  function formData(form) {
    const out = {};
    for (const [k, v] of new FormData(form).entries()) if (String(v).trim()) out[k] = String(v).trim();
    return out;
  }

  function setupActions() {
    $('#token').value = sessionStorage.getItem(TOKEN_KEY) || '';
    $('#actor').value = sessionStorage.getItem(ACTOR_KEY) || '';
    $('#token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const t = $('#token').value.trim();
      const a = $('#actor').value.trim();
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
      if (a) sessionStorage.setItem(ACTOR_KEY, a); else sessionStorage.removeItem(ACTOR_KEY);
      say(t ? '✔ Token kept for this tab.' : 'No token: actions will be refused.', !!t);
      // A read token opens the feed and the data too.
      connect();
      loadAll();
    });
    $('#forget-token').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $('#token').value = '';
      say('Token forgotten.', true);
    });
    $('#reset-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const d = formData(e.target);
      try {
        const r = await act('POST', '/api/breakers/reset', { host: d.host, container: d.container });
        say('✔ Breaker of ' + r.host + '/' + r.container + (r.was_open ? ' reset (it was open).' : ' reset (it was not open).'), true);
        reloadSoon(['containers', 'overview', 'remediations']);
      } catch (err) { refused(err); }
    });
    $('#window-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const d = formData(e.target);
      // A weekly window has no length of its own: the form's default "for" gives way.
      if (d.days || d.from || d.to) delete d.for;
      try {
        const w = await act('POST', '/api/maintenance', d);
        say('✔ Maintenance window ' + w.id + ' opened (pauses ' + w.pauses + ').', true);
        reloadSoon(['maintenance']);
      } catch (err) { refused(err); }
    });
    $('#silence-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const s = await act('POST', '/api/silences', formData(e.target));
        say('✔ Silence ' + s.id + ' added until ' + s.expires_at + '.', true);
        reloadSoon(['alerts', 'remediations']);
      } catch (err) { refused(err); }
    });
  }

  function setupTimeline() {
    const form = $('#timeline-filter');
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      state.filter = formData(form);
      load(['timeline']);
    });
    form.addEventListener('reset', () => {
      state.filter = {};
      setTimeout(() => load(['timeline']), 0);
    });
  }

  async function start() {
    setupActions();
    setupTimeline();
    updateConn();
    try {
      const cfg = await api('/api/config');
      state.readOnly = cfg.read_only;
      $('#version').textContent = cfg.version;
      $('#mode').textContent = cfg.read_only
        ? 'Read-only: HEMOSTAT_DASHBOARD_TOKEN is not set on the dashboard, so actions are refused.'
        : 'Actions are enabled for holders of the dashboard token.';
    } catch (e) {
      $('#mode').textContent = 'Could not load the settings: ' + e.message;
    }
    connect();
    await loadAll();
    // Relative times and anything the feed cannot tell (an agent going silent) age on their own.
    setInterval(() => load(['overview', 'agents', 'maintenance', 'proposals']), 15000);
    document.body.dataset.ready = 'true';
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
