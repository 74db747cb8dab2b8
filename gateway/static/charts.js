/* Small SVG charts for the dashboards: grouped horizontal bars, a weekday x hour
   heatmap and a line chart, drawn with plain DOM calls (createElementNS), so the
   page needs no build step, no CDN and nothing outside 'self' under its CSP.

   Contract: CtiCharts.bars / heatmap / lines (box, spec) replace the contents of
   ``box`` with a "show as table" toggle, the SVG and the same figures as a table.
   Every visible text comes in ``spec`` already translated (the page owns the
   catalogues); values only ever go in with textContent. Colours are classes
   (style.css, light and dark); intensities are presentation attributes
   (fill-opacity), which the CSP allows where inline style attributes are not.
   Each mark has a <title> (a tooltip, and what a screen reader says); the SVG is
   role="img" named by the chart's title. Which view a box shows (chart or table)
   is kept on the box across redraws. */
(() => {
  'use strict';

  const NS = 'http://www.w3.org/2000/svg';

  function svgEl(tag, attrs, ...children) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') node.textContent = v;
      else node.setAttribute(k, String(v));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function htmlEl(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child);
    return node;
  }

  const titled = (node, text) => { node.append(svgEl('title', { text })); return node; };

  /** 0, a round step, up to at least ``max``: axis ticks people can read. */
  function ticks(max, count = 4) {
    if (!(max > 0)) return [0, 1];
    const raw = max / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
    const out = [];
    for (let v = 0; v < max + step / 2; v += step) out.push(Math.round(v * 1e6) / 1e6);
    if (out[out.length - 1] < max) out.push(out[out.length - 1] + step);
    return out;
  }

  /** The frame shared by every chart: toggle, svg, table; the view kept on the box. */
  function frame(box, spec, svg, table) {
    const toggle = htmlEl('button', { type: 'button', class: 'link-button chart-toggle', 'data-testid': 'chart-toggle' });
    const id = `${box.id || 'chart'}-title`;
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-labelledby', id);
    svg.prepend(svgEl('title', { id, text: spec.title }));
    svg.setAttribute('class', `chart ${spec.kind}`);
    svg.setAttribute('data-testid', 'chart-svg');
    svg.setAttribute('preserveAspectRatio', 'xMinYMin meet');
    const chart = htmlEl('div', { class: 'chart-box' }, svg);
    const wrap = htmlEl('div', { class: 'table-wrap chart-table-wrap' }, table);
    const paint = () => {
      const nowTable = box.dataset.view === 'table';
      chart.hidden = nowTable;
      wrap.hidden = !nowTable;
      toggle.setAttribute('aria-expanded', String(nowTable));
      toggle.textContent = nowTable ? spec.labels.showChart : spec.labels.showTable;
    };
    toggle.addEventListener('click', () => {
      box.dataset.view = box.dataset.view === 'table' ? 'chart' : 'table';
      paint();
    });
    paint();
    const parts = [toggle];
    if (spec.legend !== false && spec.series && spec.series.length > 1) {
      parts.push(htmlEl('ul', { class: 'chart-legend', 'aria-hidden': 'true' }, ...spec.series.map((s) =>
        htmlEl('li', {}, htmlEl('span', { class: `swatch ${s.cls}` }), s.label))));
    }
    box.replaceChildren(htmlEl('div', { class: 'chart-tools' }, ...parts), chart, wrap);
  }

  function dataTable(spec, head, rows) {
    return htmlEl('table', { class: 'recent chart-table', 'data-testid': 'chart-table' },
      htmlEl('caption', { class: 'sr-only', text: spec.title }),
      htmlEl('thead', {}, htmlEl('tr', {}, ...head.map((h, i) =>
        htmlEl('th', { scope: 'col', class: i ? 'num' : null, text: h })))),
      htmlEl('tbody', {}, ...rows.map((r) => htmlEl('tr', {}, ...r.map((c, i) =>
        (i ? htmlEl('td', { class: 'num', text: c }) : htmlEl('th', { scope: 'row', text: c })))))));
  }

  /** spec: {title, kind, labels, categories: [text], series: [{key, label, cls, values: [n]}], format(n)}
      One row per category, one bar per series in it. */
  function bars(box, spec) {
    const fmt = spec.format || String;
    const n = spec.categories.length;
    const k = spec.series.length;
    const bar = 16;
    const gap = 4;
    const rowH = k * bar + (k - 1) * gap + 14;
    const left = 130;
    const right = 90;
    const width = 640;
    const top = 6;
    const height = top + Math.max(1, n) * rowH + 22;
    const max = Math.max(0, ...spec.series.flatMap((s) => s.values.map((v) => Number(v) || 0)));
    const scale = ticks(max);
    const top_ = scale[scale.length - 1];
    const x = (v) => left + ((Number(v) || 0) / top_) * (width - left - right);
    const svg = svgEl('svg', { viewBox: `0 0 ${width} ${height}`, width: '100%' });
    const grid = svgEl('g', { class: 'grid', 'aria-hidden': 'true' });
    for (const v of scale) {
      grid.append(svgEl('line', { x1: x(v), x2: x(v), y1: top, y2: height - 20 }),
        svgEl('text', { x: x(v), y: height - 6, 'text-anchor': 'middle', class: 'axis', text: fmt(v) }));
    }
    svg.append(grid);
    spec.categories.forEach((category, i) => {
      const y0 = top + i * rowH + 7;
      const row = svgEl('g', { class: 'bar-row', 'data-category': category });
      row.append(svgEl('text', { x: left - 8, y: y0 + (rowH - 14) / 2 + 4, 'text-anchor': 'end', class: 'label',
        text: category }));
      spec.series.forEach((s, j) => {
        const v = Number(s.values[i]) || 0;
        const y = y0 + j * (bar + gap);
        row.append(titled(svgEl('rect', { x: left, y, width: Math.max(v > 0 ? 1 : 0, x(v) - left), height: bar, rx: 2,
          class: `bar ${s.cls}`, 'data-testid': 'bar', 'data-series': s.key, 'data-value': v }),
        `${category} · ${s.label}: ${fmt(v)}`));
        row.append(svgEl('text', { x: x(v) + 5, y: y + bar - 4, class: 'value', 'aria-hidden': 'true', text: fmt(v) }));
      });
      svg.append(row);
    });
    const table = dataTable(spec, [spec.categoryLabel || '', ...spec.series.map((s) => s.label)],
      spec.categories.map((c, i) => [c, ...spec.series.map((s) => fmt(Number(s.values[i]) || 0))]));
    frame(box, spec, svg, table);
  }

  /** spec: {title, kind, labels, rows: [text] (7), columns: [text] (24), values: [[n]], cls, valueLabel, format(n)}
      The darker the cell, the more; an empty cell is drawn as a frame only. */
  function heatmap(box, spec) {
    const fmt = spec.format || String;
    const cols = spec.columns.length;
    const cell = 24;
    const left = 44;
    const top = 20;
    const width = left + cols * cell + 4;
    const height = top + spec.rows.length * cell + 4;
    const max = Math.max(0, ...spec.values.flat().map((v) => Number(v) || 0));
    const svg = svgEl('svg', { viewBox: `0 0 ${width} ${height}`, width: '100%' });
    spec.columns.forEach((c, h) => {
      if (h % 3 === 0) {
        svg.append(svgEl('text', { x: left + h * cell + cell / 2, y: top - 6, 'text-anchor': 'middle', class: 'axis',
          'aria-hidden': 'true', text: c }));
      }
    });
    spec.rows.forEach((r, d) => {
      const row = svgEl('g', { class: 'heat-row', 'data-testid': 'heat-row' });
      row.append(svgEl('text', { x: left - 6, y: top + d * cell + cell / 2 + 4, 'text-anchor': 'end', class: 'label',
        'aria-hidden': 'true', text: r }));
      spec.columns.forEach((c, h) => {
        const v = Number(spec.values[d][h]) || 0;
        const share = max > 0 ? v / max : 0;
        row.append(titled(svgEl('rect', { x: left + h * cell + 1, y: top + d * cell + 1, width: cell - 2,
          height: cell - 2, rx: 3, class: `heat-cell ${spec.cls}${v ? '' : ' empty'}`,
          'fill-opacity': v ? (0.15 + 0.85 * share).toFixed(3) : null,
          'data-testid': 'heat-cell', 'data-weekday': d, 'data-hour': h, 'data-value': v }),
        `${r} ${c}: ${fmt(v)} ${spec.valueLabel}`));
      });
      svg.append(row);
    });
    const table = dataTable(spec, ['', ...spec.columns],
      spec.rows.map((r, d) => [r, ...spec.columns.map((_, h) => fmt(Number(spec.values[d][h]) || 0))]));
    frame(box, { ...spec, legend: false }, svg, table);
  }

  /** spec: {title, kind, labels, points: [text] (x labels), series: [{key, label, cls, values: [n]}], format(n)} */
  function lines(box, spec) {
    const fmt = spec.format || String;
    const n = spec.points.length;
    const width = 640;
    const height = 240;
    const left = 40;
    const right = 26; // room for the last day's label
    const top = 10;
    const bottom = 28;
    const max = Math.max(0, ...spec.series.flatMap((s) => s.values.map((v) => Number(v) || 0)));
    const scale = ticks(max);
    const top_ = scale[scale.length - 1];
    const x = (i) => left + (n > 1 ? (i / (n - 1)) * (width - left - right) : (width - left - right) / 2);
    const y = (v) => height - bottom - ((Number(v) || 0) / top_) * (height - top - bottom);
    const svg = svgEl('svg', { viewBox: `0 0 ${width} ${height}`, width: '100%' });
    const grid = svgEl('g', { class: 'grid', 'aria-hidden': 'true' });
    for (const v of scale) {
      grid.append(svgEl('line', { x1: left, x2: width - right, y1: y(v), y2: y(v) }),
        svgEl('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'axis', text: fmt(v) }));
    }
    // At most about 8 day labels under the axis, always the first and the last.
    const every = Math.max(1, Math.ceil(n / 8));
    spec.points.forEach((p, i) => {
      if (i % every === 0 || i === n - 1) {
        grid.append(svgEl('text', { x: x(i), y: height - 8, 'text-anchor': 'middle', class: 'axis', text: p }));
      }
    });
    svg.append(grid);
    for (const s of spec.series) {
      const d = s.values.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
      const g = svgEl('g', { class: `series ${s.cls}`, 'data-series': s.key });
      g.append(titled(svgEl('path', { d, class: 'line', fill: 'none', 'data-testid': 'trend-line',
        'data-series': s.key }), s.label));
      s.values.forEach((v, i) => {
        g.append(titled(svgEl('circle', { cx: x(i), cy: y(v), r: n > 40 ? 2 : 3.5, class: 'point',
          'data-testid': 'trend-point', 'data-value': Number(v) || 0 }), `${spec.points[i]} · ${s.label}: ${fmt(v)}`));
      });
      svg.append(g);
    }
    const table = dataTable(spec, [spec.pointLabel || '', ...spec.series.map((s) => s.label)],
      spec.points.map((p, i) => [p, ...spec.series.map((s) => fmt(Number(s.values[i]) || 0))]));
    frame(box, spec, svg, table);
  }

  window.CtiCharts = Object.freeze({ bars, heatmap, lines });
})();
