// argocd-gateway hub status page. Plain JavaScript, no framework, no build step.
//
// Every name, label, annotation, message and log line comes from a cluster and is hostile: the
// DOM is built with createElement, textContent and setAttribute only. Links from data (the Argo
// CD web URL a gateway registered) are used only when they are http(s).
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const PAGE_SIZES = [25, 50, 100, 200];
  const FEED_TYPES = ['application.upserted', 'application.deleted', 'gateway.connected',
    'gateway.disconnected', 'gateway.health', 'gateway.deleted'];

  const S = {
    me: null,
    gateways: [],
    gwById: new Map(),
    list: { items: [], total: 0 },
    query: {},
    route: { view: 'overview' },
    app: null,
    es: null,
    timers: new Map(),
    firstPaint: false,
    listSeq: 0,
  };

  // ---- DOM helpers -------------------------------------------------------------------------

  // Creates an element; `attrs` become attributes (never HTML); children are nodes or text.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c !== undefined && c !== null) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  // A CSS class for a status value: only letters survive, so data cannot make odd class names.
  function stClass(value) {
    return 'st-' + String(value || 'none').replace(/[^A-Za-z]/g, '');
  }

  function statusEl(value, title) {
    return el('span', { class: 'status ' + stClass(value), title }, value || '—');
  }

  // Only http(s) URLs from data become links.
  function safeUrl(u) {
    try {
      const url = new URL(String(u));
      return url.protocol === 'https:' || url.protocol === 'http:' ? url.href : null;
    } catch (_) {
      return null;
    }
  }

  function toast(message, bad) {
    const t = el('div', { class: bad ? 'bad' : '' }, message);
    $('toast').append(t);
    setTimeout(() => t.remove(), bad ? 8000 : 4000);
  }

  function ago(iso) {
    if (!iso) return 'never';
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return String(iso);
    let s = Math.round((Date.now() - t) / 1000);
    const future = s < 0;
    s = Math.abs(s);
    let text;
    if (s < 5) return future ? 'in a moment' : 'just now';
    if (s < 90) text = s + ' s';
    else if (s < 5400) text = Math.round(s / 60) + ' min';
    else if (s < 172800) text = Math.round(s / 3600) + ' h';
    else text = Math.round(s / 86400) + ' d';
    return future ? 'in ' + text : text + ' ago';
  }

  function fmtTime(iso) {
    const t = new Date(iso);
    return Number.isNaN(t.getTime()) ? String(iso || '') : t.toLocaleString();
  }

  function short(rev) {
    const r = String(rev || '');
    return r.split(',').map((x) => (x.length > 12 ? x.slice(0, 8) : x)).join(', ');
  }

  // Runs fn once after `ms`, however often it is scheduled meanwhile.
  function schedule(key, ms, fn) {
    if (S.timers.has(key)) return;
    S.timers.set(key, setTimeout(() => {
      S.timers.delete(key);
      fn();
    }, ms));
  }

  function can(role) {
    const order = { viewer: 0, operator: 1, admin: 2 };
    return S.me && order[S.me.role] >= order[role];
  }

  // ---- API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    // The session's anti-CSRF token, on every state-changing request.
    if (method !== 'GET' && S.me && S.me.csrfToken) headers['X-CSRF-Token'] = S.me.csrfToken;
    const resp = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = { error: text };
    }
    if (resp.status === 401 && path !== '/api/v1/login') {
      loggedOut((data && data.error) || 'Your session has ended; log in again.');
    }
    if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || resp.statusText, data);
    return data;
  }

  function appPath(gw, ns, name) {
    return `/api/v1/gateways/${enc(gw)}/applications/${enc(ns)}/${enc(name)}`;
  }

  function appHash(gw, ns, name) {
    return `#/app/${enc(gw)}/${enc(ns)}/${enc(name)}`;
  }

  // ---- login -------------------------------------------------------------------------------

  function show(view) {
    for (const v of ['login-view', 'overview-view', 'app-view']) $(v).hidden = v !== view;
  }

  function loggedOut(message) {
    S.me = null;
    if (S.es) S.es.close();
    S.es = null;
    setLive('off', 'not connected');
    $('who').textContent = '';
    $('logout').hidden = true;
    $('login-error').textContent = message || '';
    show('login-view');
    $('login-token').focus();
  }

  async function login(ev) {
    ev.preventDefault();
    const token = $('login-token').value.trim();
    $('login-error').textContent = '';
    $('login-submit').disabled = true;
    try {
      S.me = await api('POST', '/api/v1/login', { token });
      $('login-token').value = '';
      await start();
    } catch (e) {
      $('login-error').textContent = e.message;
    } finally {
      $('login-submit').disabled = false;
    }
  }

  async function logout() {
    try {
      await api('POST', '/api/v1/logout');
    } catch (_) {
      // The session may already be gone; the page logs out all the same.
    }
    loggedOut('Logged out.');
  }

  // ---- live feed ---------------------------------------------------------------------------

  function setLive(state, text) {
    const l = $('live');
    l.dataset.state = state;
    l.textContent = text;
  }

  function openFeed() {
    if (S.es) S.es.close();
    const es = new EventSource('/api/v1/events?view=summary');
    S.es = es;
    es.addEventListener('open', () => setLive('live', 'live'));
    es.addEventListener('error', () => {
      if (S.es !== es) return;
      if (es.readyState === EventSource.CLOSED) {
        // The hub refused the resume (410) or the session ended: read everything again.
        setLive('reconnecting', 'reconnecting…');
        es.close();
        setTimeout(() => {
          if (S.me && S.es === es) {
            refreshAll();
            openFeed();
          }
        }, 2000);
      } else {
        setLive('reconnecting', 'reconnecting…');
      }
    });
    for (const type of FEED_TYPES) {
      es.addEventListener(type, (m) => {
        let e;
        try {
          e = JSON.parse(m.data);
        } catch (_) {
          return;
        }
        onEvent(e);
      });
    }
  }

  function onEvent(e) {
    const gw = e.gatewayId;
    switch (e.type) {
      case 'application.upserted':
      case 'application.deleted': {
        const a = e.application || {};
        const key = `${gw}|${a.namespace}/${a.name}`;
        if (S.route.view === 'overview') {
          const i = S.list.items.findIndex((x) => `${x.gatewayId}|${x.namespace}/${x.name}` === key);
          if (i >= 0) {
            if (e.type === 'application.upserted') {
              S.list.items[i] = Object.assign({}, a, { stale: S.list.items[i].stale });
              replaceRow(i, 'flash');
            } else {
              replaceRow(i, 'gone');
            }
          }
          schedule('list', 1000, loadApps);
          schedule('gateways', 1000, loadGateways);
        } else if (S.route.view === 'app' && S.route.gw === gw && S.route.ns === a.namespace && S.route.name === a.name) {
          if (e.type === 'application.deleted') {
            banner('This application was deleted in Argo CD; the hub shows its last known state.');
          }
          schedule('app', 150, loadApp);
        }
        break;
      }
      case 'gateway.connected':
      case 'gateway.disconnected': {
        const g = S.gwById.get(gw);
        const connected = e.type === 'gateway.connected';
        if (g) {
          g.connected = connected;
          if (connected && e.gateway) g.version = e.gateway.version;
          g.lastSeenAt = e.at;
          renderGateways();
        }
        markStale(gw, !connected);
        schedule('gateways', 1000, loadGateways);
        break;
      }
      case 'gateway.health': {
        const g = S.gwById.get(gw);
        if (g) {
          g.health = e.health;
          renderGateways();
        }
        break;
      }
      case 'gateway.deleted':
        schedule('gateways', 100, loadGateways);
        schedule('list', 100, loadApps);
        break;
      default:
    }
  }

  // A gateway that went away: its applications show their last known state, greyed at once.
  function markStale(gw, stale) {
    S.list.items.forEach((item, i) => {
      if (item.gatewayId === gw && item.stale !== stale) {
        item.stale = stale;
        replaceRow(i);
      }
    });
    if (S.route.view === 'app' && S.route.gw === gw && S.app) {
      S.app.stale = stale;
      renderBadges();
    }
  }

  // ---- routing -----------------------------------------------------------------------------

  function parseHash() {
    const h = location.hash.replace(/^#/, '');
    const [path, qs] = h.split('?');
    const parts = path.split('/').filter((p) => p !== '');
    if (parts[0] === 'app' && parts.length === 4) {
      try {
        return { view: 'app', gw: decodeURIComponent(parts[1]), ns: decodeURIComponent(parts[2]), name: decodeURIComponent(parts[3]) };
      } catch (_) {
        return { view: 'overview', params: new URLSearchParams() };
      }
    }
    return { view: 'overview', params: new URLSearchParams(qs || '') };
  }

  const FILTERS = ['q', 'gateway', 'health', 'sync', 'project', 'selector', 'annotation'];

  function readQuery(params) {
    const q = {};
    for (const f of FILTERS) q[f] = params.get(f) || '';
    q.sort = params.get('sort') || '';
    const size = Number(params.get('limit'));
    q.limit = PAGE_SIZES.includes(size) ? size : 50;
    q.offset = Math.max(0, Number(params.get('offset')) || 0);
    return q;
  }

  function queryString(q, forApi) {
    const p = new URLSearchParams();
    for (const f of FILTERS) if (q[f]) p.set(f, q[f]);
    if (q.sort) p.set('sort', q.sort);
    if (forApi || q.limit !== 50) p.set('limit', q.limit);
    if (forApi || q.offset) p.set('offset', q.offset);
    return p.toString();
  }

  // Changes the overview's query without a history entry per keystroke.
  function setQuery(changes) {
    const q = Object.assign({}, S.query, changes);
    if (!('offset' in changes)) q.offset = 0;
    const qs = queryString(q, false);
    history.replaceState(null, '', '#/' + (qs ? '?' + qs : ''));
    route(true);
  }

  // Shows the view the address names; `listOnly` when only the overview's query changed.
  async function route(listOnly) {
    const r = parseHash();
    S.route = r;
    if (!S.me) return;
    if (r.view === 'app') {
      show('app-view');
      S.app = null;
      clearAppView();
      await Promise.all([loadApp(), S.gateways.length ? null : loadGateways()]);
    } else {
      show('overview-view');
      S.query = readQuery(r.params);
      syncFilterInputs();
      await Promise.all([listOnly === true ? null : loadGateways(), loadApps()]);
    }
  }

  // ---- overview: gateways ------------------------------------------------------------------

  async function loadGateways() {
    try {
      const data = await api('GET', '/api/v1/gateways');
      S.gateways = data.items || [];
      S.gwById = new Map(S.gateways.map((g) => [g.id, g]));
      renderGateways();
      renderGatewayOptions();
    } catch (e) {
      if (e.status !== 401) toast('Cannot list gateways: ' + e.message, true);
    }
  }

  function gwName(id) {
    const g = S.gwById.get(id);
    return g && g.name ? g.name : id;
  }

  function bars(counts, order) {
    const entries = Object.entries(counts || {});
    const total = entries.reduce((n, [, v]) => n + v, 0);
    const bar = el('div', { class: 'bar', role: 'img' });
    const legend = [];
    entries.sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]));
    for (const [k, v] of entries) {
      const seg = el('span', { class: stClass(k), title: `${k}: ${v}` });
      seg.style.width = total ? (100 * v) / total + '%' : '0';
      bar.append(seg);
      legend.push(`${k} ${v.toLocaleString()}`);
    }
    bar.setAttribute('aria-label', legend.join(', '));
    return [bar, el('div', { class: 'bar-legend' }, legend.join(' · ') || 'none')];
  }

  const HEALTH_ORDER = ['Healthy', 'Progressing', 'Suspended', 'Missing', 'Degraded', 'Unknown'];
  const SYNC_ORDER = ['Synced', 'OutOfSync', 'Unknown'];

  function healthCell(h) {
    if (!h) return el('td', {}, el('span', { class: 'muted' }, 'not yet'));
    const failing = (h.checks || []).filter((c) => c.status !== 'ok');
    const list = el('ul', { class: 'checks' });
    for (const c of failing) {
      list.append(el('li', { class: c.status }, `${c.name}: ${c.detail || c.status}`,
        c.fix ? el('span', { class: 'fix' }, 'fix: ' + c.fix) : null));
    }
    return el('td', {}, statusEl(h.status), ' ', el('span', { class: 'sub', title: fmtTime(h.checkedAt) }, ago(h.checkedAt)),
      failing.length ? list : null);
  }

  function certCell(iso) {
    if (!iso) return el('td', {}, '—');
    const left = (Date.parse(iso) - Date.now()) / 86400000;
    const cls = left < 0 ? 'badge bad' : left < 7 ? 'badge warn' : '';
    return el('td', { title: 'expires ' + fmtTime(iso) }, el('span', { class: cls }, left < 0 ? 'expired ' + ago(iso) : 'expires ' + ago(iso)));
  }

  function gatewayRow(g) {
    const envs = (g.environments || []).map((e) => el('span', { class: 'chip' }, e));
    const update = g.update || {};
    let updateEl = null;
    if (update.state === 'available') updateEl = el('span', { class: 'badge available', title: update.reason }, 'update available → ' + update.desiredVersion);
    else if (update.state === 'held') updateEl = el('span', { class: 'badge held', title: update.reason }, 'update held');
    const check = el('button', { type: 'button', class: 'quiet', disabled: !can('operator') || !g.connected,
      title: can('operator') ? 'Run a health check now' : 'needs the operator role' }, 'Health check');
    check.addEventListener('click', () => healthCheck(g.id, check));
    const show = el('button', { type: 'button', class: 'quiet' }, 'Applications');
    show.addEventListener('click', () => setQuery({ gateway: g.id }));
    const lag = typeof g.relayLagSeconds === 'number' ? (g.relayLagSeconds * 1000).toFixed(0) + ' ms' : '—';
    const tr = el('tr', { class: g.connected ? '' : 'stale', 'data-gateway': g.id },
      el('td', { class: 'name' }, el('strong', {}, g.name || g.id), el('span', { class: 'sub' }, g.id), ...envs),
      el('td', {}, el('span', { class: 'pill ' + (g.connected ? 'connected' : 'disconnected') }, g.connected ? 'connected' : 'disconnected'),
        g.connected ? null : el('span', { class: 'badge stale' }, 'stale'),
        el('span', { class: 'sub', title: fmtTime(g.lastSeenAt) }, 'last seen ' + ago(g.lastSeenAt))),
      el('td', {}, g.version || '—', ' ', updateEl),
      certCell(g.certificateExpiresAt),
      el('td', {}, lag),
      healthCell(g.health),
      el('td', {}, el('div', { class: 'bars' }, ...bars(g.applications && g.applications.health, HEALTH_ORDER),
        ...bars(g.applications && g.applications.sync, SYNC_ORDER))),
      el('td', {}, check, ' ', show));
    return tr;
  }

  function renderGateways() {
    const body = clear($('gateways').tBodies[0]);
    for (const g of S.gateways) body.append(gatewayRow(g));
    const connected = S.gateways.filter((g) => g.connected).length;
    $('gw-summary').textContent = `${connected} of ${S.gateways.length} connected`;
    $('gw-empty').hidden = S.gateways.length > 0;
  }

  function renderGatewayOptions() {
    const sel = $('f-gateway');
    const want = S.query.gateway || '';
    clear(sel).append(el('option', { value: '' }, 'All gateways'));
    for (const g of S.gateways) sel.append(el('option', { value: g.id }, g.name ? `${g.name} (${g.id})` : g.id));
    if (want && !S.gwById.has(want)) sel.append(el('option', { value: want }, want));
    sel.value = want;
  }

  async function healthCheck(id, button) {
    if (button) button.disabled = true;
    try {
      const r = await api('POST', `/api/v1/gateways/${enc(id)}/health-check`);
      toast(`Health check of ${gwName(id)}: ${r.status}`);
      const g = S.gwById.get(id);
      if (g) {
        g.health = r;
        renderGateways();
      }
    } catch (e) {
      toast(`Health check of ${gwName(id)} failed: ${e.message}`, true);
    } finally {
      if (button) button.disabled = false;
    }
  }

  // ---- overview: applications --------------------------------------------------------------

  function syncFilterInputs() {
    for (const f of FILTERS) {
      const input = $('f-' + f);
      if (input && document.activeElement !== input) input.value = S.query[f] || '';
      if (f === 'project' && S.query.project && !Array.from(input.options).some((o) => o.value === S.query.project)) {
        input.append(el('option', { value: S.query.project }, S.query.project));
        input.value = S.query.project;
      }
    }
    $('page-size').value = String(S.query.limit);
    for (const th of document.querySelectorAll('#apps th[data-sort]')) {
      const k = th.dataset.sort;
      th.classList.toggle('sorted-asc', S.query.sort === k || (!S.query.sort && k === 'gateway'));
      th.classList.toggle('sorted-desc', S.query.sort === '-' + k);
    }
  }

  async function loadApps() {
    const seq = ++S.listSeq;
    const q = S.query;
    try {
      const data = await api('GET', `/api/v1/applications?view=summary&facets=true&${queryString(q, true)}`);
      if (seq !== S.listSeq) return; // a newer query answered first
      S.list = { items: data.items || [], total: data.total || 0 };
      $('apps-error').textContent = '';
      renderApps();
      renderProjects((data.facets && data.facets.projects) || []);
      if (!S.firstPaint && S.list.items.length) {
        S.firstPaint = true;
        // Read by the browser test: time from navigation to the first page of applications.
        performance.mark('apps-rendered');
        document.body.dataset.appsRendered = 'true';
      }
    } catch (e) {
      if (seq === S.listSeq && e.status !== 401) $('apps-error').textContent = e.message;
    }
  }

  function renderProjects(projects) {
    const sel = $('f-project');
    const want = S.query.project || '';
    if (document.activeElement === sel) return;
    clear(sel).append(el('option', { value: '' }, 'Any project'));
    for (const p of projects) sel.append(el('option', { value: p }, p));
    if (want && !projects.includes(want)) sel.append(el('option', { value: want }, want));
    sel.value = want;
  }

  function appRow(a, extraClass) {
    const op = a.operation;
    const labels = Object.entries(a.labels || {}).slice(0, 4).map(([k, v]) => el('span', { class: 'chip', title: `${k}=${v}` }, `${k}=${v}`));
    const rev = a.sync ? (a.sync.revision || (a.sync.revisions || []).join(',')) : '';
    const link = el('a', { href: appHash(a.gatewayId, a.namespace, a.name) }, a.name);
    const cls = [a.stale ? 'stale' : '', extraClass || ''].join(' ').trim();
    return el('tr', { class: cls || null, 'data-key': `${a.gatewayId}|${a.namespace}/${a.name}` },
      el('td', { class: 'name' }, link, el('span', { class: 'sub' }, a.namespace)),
      el('td', {}, gwName(a.gatewayId), a.stale ? el('span', { class: 'badge stale', title: 'the gateway is disconnected: last known state' }, 'stale') : null),
      el('td', {}, a.project),
      el('td', {}, statusEl(a.sync && a.sync.status)),
      el('td', {}, statusEl(a.health && a.health.status, a.health && a.health.message)),
      el('td', { class: 'mono', title: rev }, short(rev)),
      el('td', {}, op ? statusEl(op.phase, op.message) : el('span', { class: 'muted' }, '—')),
      el('td', {}, ...labels));
  }

  function replaceRow(i, extraClass) {
    const body = $('apps').tBodies[0];
    const old = body.rows[i];
    if (old) body.replaceChild(appRow(S.list.items[i], extraClass), old);
  }

  function renderApps() {
    const body = clear($('apps').tBodies[0]);
    const frag = document.createDocumentFragment();
    S.list.items.forEach((a) => frag.append(appRow(a)));
    body.append(frag);
    const { total } = S.list;
    const from = total ? S.query.offset + 1 : 0;
    const to = Math.min(S.query.offset + S.list.items.length, total);
    $('range').textContent = `${from.toLocaleString()}–${to.toLocaleString()} of ${total.toLocaleString()}`;
    $('app-summary').textContent = `${total.toLocaleString()} matching`;
    $('prev').disabled = S.query.offset === 0;
    $('next').disabled = to >= total;
    if (!S.list.items.length) {
      body.append(el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No application matches.')));
    }
  }

  // ---- one application ---------------------------------------------------------------------

  function clearAppView() {
    $('a-title').textContent = S.route.name || '';
    $('a-gateway').textContent = S.route.gw || '';
    clear($('a-badges'));
    clear($('a-summary'));
    clear($('a-timeline'));
    clear($('a-transitions').tBodies[0]);
    clear($('a-resources').tBodies[0]);
    clear($('a-live'));
    $('a-banner').hidden = true;
    $('a-argocd').hidden = true;
    for (const id of ['sync', 'refresh', 'hard-refresh', 'app-health-check']) {
      const b = $(id);
      b.disabled = !can('operator');
      b.title = can('operator') ? '' : 'needs the operator role';
    }
  }

  function banner(text) {
    $('a-banner').textContent = text;
    $('a-banner').hidden = false;
  }

  async function loadApp() {
    const { gw, ns, name } = S.route;
    if (S.route.view !== 'app') return;
    try {
      const [app, tl] = await Promise.all([
        api('GET', appPath(gw, ns, name)),
        api('GET', appPath(gw, ns, name) + '/timeline?limit=200'),
      ]);
      if (S.route.view !== 'app' || S.route.gw !== gw || S.route.ns !== ns || S.route.name !== name) return;
      S.app = app;
      renderApp(tl.items || []);
    } catch (e) {
      if (e.status === 404) {
        banner(e.message);
        try {
          const tl = await api('GET', appPath(gw, ns, name) + '/timeline?limit=200');
          renderTimeline(tl.items || []);
        } catch (_) {
          // Nothing more to show.
        }
      } else if (e.status !== 401) {
        banner('Cannot load the application: ' + e.message);
      }
    }
  }

  function renderBadges() {
    const a = S.app;
    const b = clear($('a-badges'));
    if (!a) return;
    b.append(el('span', { class: 'badge' }, 'health ', statusEl(a.health && a.health.status)),
      el('span', { class: 'badge' }, 'sync ', statusEl(a.sync && a.sync.status)));
    if (a.operation) b.append(el('span', { class: 'badge' }, 'operation ', statusEl(a.operation.phase)));
    if (a.stale) b.append(el('span', { class: 'badge stale', title: 'the gateway is disconnected: last known state' }, 'stale'));
  }

  function dl(pairs) {
    const d = clear($('a-summary'));
    for (const [k, v] of pairs) {
      if (v === undefined || v === null || v === '') continue;
      d.append(el('dt', {}, k), v instanceof Node ? el('dd', {}, v) : el('dd', {}, String(v)));
    }
  }

  function renderApp(timeline) {
    const a = S.app;
    const g = S.gwById.get(a.gatewayId);
    $('a-title').textContent = a.name;
    $('a-gateway').textContent = g && g.name ? `${g.name} (${a.gatewayId})` : a.gatewayId;
    renderBadges();
    const web = g && safeUrl(g.argocdWebUrl);
    const link = $('a-argocd');
    if (web) {
      link.href = `${web.replace(/\/+$/, '')}/applications/${enc(a.namespace)}/${enc(a.name)}`;
      link.hidden = false;
    } else {
      link.hidden = true;
    }
    const sources = el('div', {}, ...(a.sources || []).map((s) => el('div', { class: 'mono' },
      [s.repoURL, s.path || s.chart, s.targetRevision].filter(Boolean).join('  '))));
    const op = a.operation;
    const labels = el('div', {}, ...Object.entries(a.labels || {}).map(([k, v]) => el('div', { class: 'mono' }, `${k}=${v}`)));
    const annotations = el('div', {}, ...Object.entries(a.annotations || {}).map(([k, v]) => el('div', { class: 'mono' }, `${k}=${v}`)));
    const conditions = el('div', {}, ...(a.conditions || []).map((c) => el('div', {}, el('strong', {}, c.type + ': '), c.message)));
    const dest = a.destination || {};
    dl([
      ['Namespace', a.namespace],
      ['Project', a.project],
      ['Destination', [dest.server || dest.name, dest.namespace].filter(Boolean).join(' / ')],
      ['Sources', sources],
      ['Sync', a.sync && a.sync.status],
      ['Revision', el('span', { class: 'mono' }, (a.sync && (a.sync.revision || (a.sync.revisions || []).join(', '))) || '—')],
      ['Health', a.health && a.health.status],
      ['Health message', a.health && a.health.message],
      ['Operation', op ? `${op.phase}${op.message ? ': ' + op.message : ''}` : null],
      ['Started', op && op.startedAt ? fmtTime(op.startedAt) : null],
      ['Finished', op && op.finishedAt ? fmtTime(op.finishedAt) : null],
      ['Reconciled', a.reconciledAt ? fmtTime(a.reconciledAt) : null],
      ['Images', (a.images || []).join(', ')],
      ['Conditions', (a.conditions || []).length ? conditions : null],
      ['Labels', Object.keys(a.labels || {}).length ? labels : null],
      ['Annotations', Object.keys(a.annotations || {}).length ? annotations : null],
    ]);
    const rbody = clear($('a-resources').tBodies[0]);
    for (const r of a.resources || []) {
      rbody.append(el('tr', {},
        el('td', {}, r.group ? `${r.kind}.${r.group}` : r.kind),
        el('td', {}, r.namespace),
        el('td', { class: 'name' }, r.name),
        el('td', {}, statusEl(r.status)),
        el('td', {}, r.health ? statusEl(r.health.status, r.health.message) : '—')));
    }
    $('a-res-count').textContent = `${(a.resources || []).length}`;
    const pods = clear($('logs-pods'));
    for (const r of a.resources || []) if (r.kind === 'Pod') pods.append(el('option', { value: r.name }));
    renderTimeline(timeline);
  }

  // ---- timeline picture --------------------------------------------------------------------

  const LANES = [
    ['Health', (p) => p.health, (p) => p.healthMessage],
    ['Sync', (p) => p.sync, () => ''],
    ['Operation', (p) => p.operationPhase || 'none', (p) => p.operationMessage],
  ];

  function renderTimeline(items) {
    const box = clear($('a-timeline'));
    const tbody = clear($('a-transitions').tBodies[0]);
    if (!items.length) {
      box.append(el('p', { class: 'muted' }, 'No transitions recorded yet.'));
      return;
    }
    const points = items.slice().reverse(); // oldest first
    const now = Date.now();
    const times = points.map((p) => Date.parse(p.at));
    let t0 = times[0];
    const last = points[points.length - 1];
    const deleted = (last.changed || []).includes('deleted');
    let t1 = deleted ? times[times.length - 1] : now;
    if (t1 - t0 < 60000) t0 = t1 - 60000;
    const W = 760;
    const left = 78;
    const right = 12;
    const laneH = 20;
    const gap = 8;
    const top = 22;
    const H = top + LANES.length * (laneH + gap) + 22;
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'State timeline' });
    LANES.forEach(([label, value, message], li) => {
      const y = top + li * (laneH + gap);
      root.append(svg('text', { class: 'lane-label', x: 4, y: y + 14 }, label));
      points.forEach((p, i) => {
        const start = x(times[i]);
        const end = i + 1 < points.length ? x(times[i + 1]) : x(t1);
        const v = value(p);
        const until = i + 1 < points.length ? points[i + 1].at : deleted ? p.at : null;
        const msg = message(p);
        const title = `${label} ${v} from ${fmtTime(p.at)}${until ? ' to ' + fmtTime(until) : ' until now'}${msg ? ' — ' + msg : ''}`;
        const rect = svg('rect', { class: 'seg ' + stClass(v), x: start, y, width: Math.max(end - start, 2), height: laneH, 'data-value': v },
          svg('title', {}, title));
        root.append(rect);
      });
    });
    // Revisions: a dashed line where the deployed revision changed, labelled with its short sha.
    points.forEach((p, i) => {
      const ch = p.changed || [];
      if (!(ch.includes('revision') || ch.includes('first'))) return;
      const px = x(times[i]);
      root.append(svg('line', { class: 'rev', x1: px, x2: px, y1: top - 4, y2: top + LANES.length * (laneH + gap) - gap + 4 },
        svg('title', {}, `revision ${p.revision} at ${fmtTime(p.at)}`)));
      root.append(svg('text', { class: 'rev-label', x: Math.min(px + 2, W - 60), y: 12 }, short(p.revision)));
    });
    const axisY = top + LANES.length * (laneH + gap) + 12;
    const ticks = 4;
    for (let k = 0; k <= ticks; k++) {
      const t = t0 + ((t1 - t0) * k) / ticks;
      const anchor = k === 0 ? 'start' : k === ticks ? 'end' : 'middle';
      const d = new Date(t);
      const label = t1 - t0 > 86400000 ? d.toLocaleDateString() + ' ' + d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : d.toLocaleTimeString();
      root.append(svg('text', { class: 'axis', x: x(t), y: axisY, 'text-anchor': anchor }, label));
    }
    if (!deleted) root.append(svg('line', { class: 'now', x1: x(t1), x2: x(t1), y1: top - 4, y2: axisY - 10 }));
    box.append(root);

    for (const p of items) {
      tbody.append(el('tr', {},
        el('td', { title: fmtTime(p.at) }, ago(p.at)),
        el('td', {}, (p.changed || []).join(', ')),
        el('td', {}, statusEl(p.health, p.healthMessage)),
        el('td', {}, statusEl(p.sync)),
        el('td', { class: 'mono', title: p.revision }, short(p.revision)),
        el('td', {}, p.operationPhase ? statusEl(p.operationPhase, p.operationMessage) : '—')));
    }
  }

  // ---- actions and live reads --------------------------------------------------------------

  async function action(label, path, body, button) {
    if (button) button.disabled = true;
    try {
      await api('POST', path, body);
      toast(`${label}: done`);
    } catch (e) {
      toast(`${label} failed: ${e.message}`, true);
    } finally {
      if (button) button.disabled = !can('operator');
    }
  }

  function liveTable(headers, rows) {
    const t = el('table', { class: 'grid compact' }, el('thead', {}, el('tr', {}, ...headers.map((h) => el('th', {}, h)))));
    const b = el('tbody');
    for (const r of rows) b.append(el('tr', {}, ...r.map((c) => (c instanceof Node ? el('td', {}, c) : el('td', {}, c === undefined || c === null ? '' : String(c))))));
    t.append(b);
    return t;
  }

  async function liveRead(what, suffix, render) {
    const { gw, ns, name } = S.route;
    const out = clear($('a-live'));
    out.append(el('p', { class: 'muted' }, `Asking Argo CD for the ${what} through the gateway…`));
    try {
      const data = await api('GET', appPath(gw, ns, name) + suffix);
      clear(out).append(el('h3', {}, what), render(data));
    } catch (e) {
      clear(out).append(el('p', { class: 'error' }, `${what}: ${e.message}`));
    }
  }

  function renderTree(data) {
    const nodes = data.nodes || [];
    const pods = clear($('logs-pods'));
    for (const n of nodes) if (n.kind === 'Pod') pods.append(el('option', { value: n.name }));
    return liveTable(['Kind', 'Namespace', 'Name', 'Health', 'Created'],
      nodes.map((n) => [n.group ? `${n.kind}.${n.group}` : n.kind, n.namespace, n.name,
        n.health ? statusEl(n.health.status, n.health.message) : '—', n.createdAt ? fmtTime(n.createdAt) : '']));
  }

  function renderEvents(data) {
    const items = data.items || [];
    return liveTable(['Type', 'Reason', 'Object', 'Message', 'Count', 'Last seen'],
      items.map((e) => [e.type, e.reason, e.involvedObject ? `${e.involvedObject.kind}/${e.involvedObject.name}` : '',
        e.message, e.count, e.lastTimestamp ? fmtTime(e.lastTimestamp) : '']));
  }

  function renderLogs(data) {
    const lines = (Array.isArray(data) ? data : []).map((l) => `${l.timeStampStr || ''} ${l.content || ''}`.trim());
    return el('pre', {}, lines.join('\n') || '(no lines)');
  }

  // ---- start -------------------------------------------------------------------------------

  async function refreshAll() {
    if (S.route.view === 'app') await Promise.all([loadApp(), loadGateways()]);
    else await Promise.all([loadGateways(), loadApps()]);
  }

  async function start() {
    $('who').textContent = `${S.me.name} · ${S.me.role}`;
    $('logout').hidden = false;
    openFeed();
    await route();
  }

  function wire() {
    $('login-form').addEventListener('submit', login);
    $('logout').addEventListener('click', logout);
    window.addEventListener('hashchange', route);
    let typing = null;
    for (const f of FILTERS) {
      const input = $('f-' + f);
      const apply = () => setQuery({ [f]: input.value.trim() });
      if (input.tagName === 'SELECT') input.addEventListener('change', apply);
      else {
        input.addEventListener('input', () => {
          clearTimeout(typing);
          typing = setTimeout(apply, 250);
        });
      }
    }
    $('filters').addEventListener('submit', (e) => e.preventDefault());
    $('f-clear').addEventListener('click', () => setQuery(Object.fromEntries(FILTERS.map((f) => [f, '']))));
    $('prev').addEventListener('click', () => setQuery({ offset: Math.max(0, S.query.offset - S.query.limit) }));
    $('next').addEventListener('click', () => setQuery({ offset: S.query.offset + S.query.limit }));
    $('page-size').addEventListener('change', () => setQuery({ limit: Number($('page-size').value) }));
    for (const th of document.querySelectorAll('#apps th[data-sort]')) {
      th.addEventListener('click', () => {
        const k = th.dataset.sort;
        setQuery({ sort: S.query.sort === k ? '-' + k : k });
      });
    }
    $('sync-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const { gw, ns, name } = S.route;
      const body = { prune: $('sync-prune').checked, dryRun: $('sync-dry').checked };
      const rev = $('sync-revision').value.trim();
      if (rev) body.revision = rev;
      action(`Sync of ${name}`, appPath(gw, ns, name) + '/sync', body, $('sync'));
    });
    $('refresh').addEventListener('click', () => {
      const { gw, ns, name } = S.route;
      action(`Refresh of ${name}`, appPath(gw, ns, name) + '/refresh', { hard: false }, $('refresh'));
    });
    $('hard-refresh').addEventListener('click', () => {
      const { gw, ns, name } = S.route;
      action(`Hard refresh of ${name}`, appPath(gw, ns, name) + '/refresh', { hard: true }, $('hard-refresh'));
    });
    $('app-health-check').addEventListener('click', () => healthCheck(S.route.gw, $('app-health-check')));
    $('load-tree').addEventListener('click', () => liveRead('resource tree', '/resource-tree', renderTree));
    $('load-events').addEventListener('click', () => liveRead('events', '/events', renderEvents));
    $('logs-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const p = new URLSearchParams({ podName: $('logs-pod').value.trim(), tailLines: $('logs-tail').value || '100' });
      const c = $('logs-container').value.trim();
      if (c) p.set('container', c);
      liveRead('logs', '/logs?' + p.toString(), renderLogs);
    });
    // Relative times stay true.
    setInterval(() => {
      if (S.me && S.route.view === 'overview') renderGateways();
    }, 10000);
  }

  async function boot() {
    wire();
    try {
      S.me = await api('GET', '/api/v1/session');
    } catch (_) {
      loggedOut('');
      return;
    }
    await start();
  }

  boot();
})();
