// The club page's "Recent results": when a live match ends (a table's live card's
// data-status becomes finished or abandoned), ask the API for the latest results and show
// them, so the match that just ended moves there. The record is written just after the
// match ends (scorer/record_hooks.py), so a few tries, bounded, with a growing wait.
(() => {
  'use strict';
  const section = document.getElementById('recent-results');
  const cards = Array.from(document.querySelectorAll('section.live[data-table]'));
  if (!section || !cards.length) return;
  const config = JSON.parse(document.getElementById('rallycast-config').textContent);
  const club = config.club.id;
  // A record's table (its number, as stored) by the name the server gave it for this page.
  const tableNames = new Map((config.tables || []).map((t) => [String(t.table), t.name]));
  const TRIES = [800, 1500, 3000, 6000];

  function shownIds() {
    return Array.from(section.querySelectorAll('tr[data-match]')).map((tr) => tr.dataset.match);
  }
  function two(n) { return String(n).padStart(2, '0'); }
  function localTime(iso) {
    const d = new Date(iso);
    return d.getFullYear() + '-' + two(d.getMonth() + 1) + '-' + two(d.getDate()) + ' ' + two(d.getHours()) + ':' + two(d.getMinutes());
  }
  function duration(seconds) {
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? h + ':' + two(m) + ':' + two(r) : m + ':' + two(r);
  }
  function cell(row, content, className) {
    const td = document.createElement('td');
    if (className) td.className = className;
    if (content instanceof Node) td.append(content); else td.textContent = content;
    row.append(td);
    return td;
  }
  function link(href, text, className) {
    const a = document.createElement('a');
    a.href = href;
    if (className) a.className = className;
    const bdi = document.createElement('bdi');
    bdi.textContent = text;
    a.append(bdi);
    return a;
  }
  function render(matches) {
    const body = section.querySelector('tbody');
    if (!body) return false; // no table yet (no results before): reload shows it
    // The server shows a Table column when the club has several tables or a listed match was
    // played on a table other than 1 (viewer/tables.py shows_table_column): a change of that
    // needs the server's header (reload).
    const withTable = tableNames.size > 1
      || matches.some((m) => m.table !== null && m.table !== undefined && !['', '1'].includes(String(m.table)));
    if (withTable !== Boolean(section.querySelector('th[data-col="table"]'))) return false;
    const rows = matches.map((m) => {
      const tr = document.createElement('tr');
      tr.dataset.match = m.match_id;
      tr.dataset.status = m.status;
      const time = document.createElement('time');
      time.dateTime = m.ended_at;
      time.textContent = localTime(m.ended_at);
      const when = document.createElement('a');
      when.href = '/clubs/' + club + '/matches/' + encodeURIComponent(m.match_id);
      when.append(time);
      cell(tr, when);
      if (withTable) {
        const name = document.createElement('bdi');
        name.textContent = m.table === null || m.table === undefined ? '' : tableNames.get(String(m.table)) || String(m.table);
        cell(tr, name);
      }
      const players = cell(tr, '');
      m.players.forEach((name, i) => {
        if (i) players.append(' – ');
        const cls = m.winner === i + 1 ? 'winner' : '';
        players.append(m.game_type === 'double'
          ? Object.assign(document.createElement('bdi'), { textContent: name, className: cls })
          : link('/clubs/' + club + '/players/' + encodeURIComponent(name), name, cls));
      });
      cell(tr, m.games_won[0] + ':' + m.games_won[1], 'num');
      cell(tr, duration(m.duration_s), 'num');
      return tr;
    });
    body.replaceChildren(...rows);
    document.getElementById('recent-table').hidden = rows.length === 0;
    document.getElementById('no-matches').hidden = rows.length > 0;
    return true;
  }
  async function refresh(before, attempt) {
    try {
      const response = await fetch(section.dataset.recentUrl, { cache: 'no-store' });
      if (response.ok) {
        const data = await response.json();
        const ids = data.matches.map((m) => m.match_id);
        if (ids.join() !== before.join()) {
          if (!render(data.matches)) location.reload();
          return;
        }
      }
    } catch (error) { /* offline for a moment: the next try */ }
    if (attempt + 1 < TRIES.length) setTimeout(() => refresh(before, attempt + 1), TRIES[attempt + 1]);
  }
  for (const live of cards) {
    let lastStatus = live.dataset.status;
    new MutationObserver(() => {
      const status = live.dataset.status;
      if (status !== lastStatus && (status === 'finished' || status === 'abandoned')) {
        const before = shownIds();
        setTimeout(() => refresh(before, 0), TRIES[0]);
      }
      lastStatus = status;
    }).observe(live, { attributes: true, attributeFilter: ['data-status'] });
  }
})();
