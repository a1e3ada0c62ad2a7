/* histokd view: the page. Reads api/workspace.json, shows a slide (dzi/<id>.dzi) with OpenSeadragon and the
   overlays (overlay/<model>/<layer>/<id>_files/<level>/<col>_<row>.png) as tiled images of the same pyramid.
   Every text from the workspace is set with textContent. */
(function () {
  "use strict";
  var state = {
    ws: null, slides: [], order: [], current: -1, model: null, sort: "name",
    layers: {},   // key -> {on, opacity, threshold, item}
    tiles: null, tilesFor: null, mark: null, loaded: 0,
    compare: "", viewer2: null, loaded2: 0   // the second, synchronised viewer: one layer of the same slide
  };
  window.histokdView = state;  // for tests and the curious: what is shown, how many tiles arrived

  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fmt(v, d) { return (v === null || v === undefined) ? "–" : Number(v).toFixed(d === undefined ? 3 : d); }
  function status(msg) { $("status").textContent = msg || ""; }
  function enc(s) { return encodeURIComponent(s); }

  function getJSON(url) {
    return fetch(url, {cache: "no-store"}).then(function (r) {
      if (!r.ok) { return r.text().then(function (t) { throw new Error(url + ": " + r.status + " " + t); }); }
      return r.json();
    });
  }

  var viewer = OpenSeadragon({
    element: $("viewer"),
    prefixUrl: "vendor/openseadragon/images/",
    drawer: "canvas",
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    crossOriginPolicy: false,
    maxZoomPixelRatio: 4,
    gestureSettingsMouse: {clickToZoom: false},
    imageLoaderLimit: 6
  });
  state.viewer = viewer;
  viewer.addHandler("tile-loaded", function () { state.loaded += 1; });
  viewer.addHandler("open-failed", function (e) { status("cannot open the slide: " + (e.message || "")); });

  // ---------------------------------------------------------------------------------------------- slides
  function summary(s) { return (state.model && s.models[state.model]) || null; }
  function sortKey(s) {
    var m = summary(s);
    if (state.sort === "score") return m && m.p !== null ? -m.p : Infinity;
    if (state.sort === "error") return m && m.error !== null ? -m.error : Infinity;
    if (state.sort === "disagreement") return m && m.disagreement !== null ? -m.disagreement : Infinity;
    return 0;
  }
  function keyText(s) {
    var m = summary(s);
    if (!m) return "";
    if (state.sort === "error") return fmt(m.error, 2);
    if (state.sort === "disagreement") return fmt(m.disagreement, 2);
    return m.pred || "";
  }
  function renderSlideList() {
    var idx = state.slides.map(function (_, i) { return i; });
    idx.sort(function (a, b) {
      var ka = sortKey(state.slides[a]), kb = sortKey(state.slides[b]);
      if (ka !== kb) return ka < kb ? -1 : 1;
      return state.slides[a].id < state.slides[b].id ? -1 : (state.slides[a].id > state.slides[b].id ? 1 : 0);
    });
    state.order = idx;
    var body = $("slide-table").tBodies[0];
    body.textContent = "";
    idx.forEach(function (i) {
      var s = state.slides[i], m = summary(s), tr = el("tr");
      tr.appendChild(el("td", s.id));
      tr.appendChild(el("td", s.label));
      tr.appendChild(el("td", s.split));
      tr.appendChild(el("td", m ? fmt(m.p, 2) : "", "num"));
      tr.appendChild(el("td", keyText(s), "num"));
      if (s.unavailable) { tr.className = "unavailable"; tr.title = s.unavailable; }
      else if (m && m.error_text) { tr.className = "unavailable"; tr.title = m.error_text; }
      if (i === state.current) tr.className += " current";
      tr.addEventListener("click", function () { openSlide(i); });
      body.appendChild(tr);
    });
  }
  function step(delta) {
    if (!state.order.length) return;
    var pos = state.order.indexOf(state.current);
    pos = (pos + delta + state.order.length) % state.order.length;
    openSlide(state.order[pos]);
  }

  // ---------------------------------------------------------------------------------------------- overlays
  function layerInfo(key) {
    for (var i = 0; i < state.ws.layers.length; i++) if (state.ws.layers[i].key === key) return state.ws.layers[i];
    return null;
  }
  function overlaySource(key, s) {
    var parts = key.split("/"), dz = s.dz, L = state.layers[key];
    var q = state.ws.static ? "" : "?t=" + (L.graded ? L.threshold.toFixed(3) : "0");
    return {
      width: dz.width, height: dz.height, tileSize: dz.tile_size, tileOverlap: dz.overlap,
      minLevel: 0, maxLevel: dz.max_level,
      getTileUrl: function (level, x, y) {
        return "overlay/" + enc(parts[0]) + "/" + enc(parts[1]) + "/" + enc(s.id) + "_files/" + level + "/" +
          x + "_" + y + ".png" + q;
      }
    };
  }
  function removeOverlay(key) {
    var L = state.layers[key];
    if (L && L.item) { viewer.world.removeItem(L.item); L.item = null; }
  }
  function addOverlay(key) {
    var s = state.slides[state.current], L = state.layers[key];
    if (!s || !s.dz || s.layers.indexOf(key) < 0 || !L.on) return;
    removeOverlay(key);
    viewer.addTiledImage({
      tileSource: overlaySource(key, s), opacity: L.opacity,
      success: function (e) {
        if (state.slides[state.current] !== s || !L.on) { viewer.world.removeItem(e.item); return; }
        L.item = e.item;
      }
    });
  }
  function renderLayers() {
    var box = $("layers"), s = state.slides[state.current];
    box.textContent = "";
    if (!s) return;
    var keys = state.ws.layers.filter(function (ly) { return ly.model === "_"; }).map(function (ly) { return ly.key; });
    state.ws.models.forEach(function (m) { keys = keys.concat(m.layers); });
    keys.forEach(function (key) {
      if (s.layers.indexOf(key) < 0) return;
      var info = layerInfo(key), L = state.layers[key];
      var div = el("div", null, "layer");
      var on = el("input"); on.type = "checkbox"; on.checked = L.on;
      on.addEventListener("change", function () { L.on = on.checked; if (L.on) addOverlay(key); else removeOverlay(key); });
      var head = el("label"); head.appendChild(on); head.appendChild(el("span", " " + info.title, "title"));
      div.appendChild(head);
      var op = el("input"); op.type = "range"; op.min = 0; op.max = 1; op.step = 0.05; op.value = L.opacity;
      var opLabel = el("div", "opacity "); opLabel.appendChild(op);
      op.addEventListener("input", function () { L.opacity = Number(op.value); if (L.item) L.item.setOpacity(L.opacity); });
      div.appendChild(opLabel);
      if (info.graded) {
        var th = el("input"); th.type = "range"; th.min = 0; th.max = 1; th.step = 0.05; th.value = L.threshold;
        var thVal = el("span", " " + fmt(L.threshold, 2));
        var thLabel = el("div", "threshold "); thLabel.appendChild(th); thLabel.appendChild(thVal);
        if (state.ws.static) { th.disabled = true; thLabel.title = "a static export shows every value"; }
        th.addEventListener("input", function () { thVal.textContent = " " + fmt(th.value, 2); });
        th.addEventListener("change", function () { L.threshold = Number(th.value); if (L.on) addOverlay(key); });
        div.appendChild(thLabel);
        var bar = el("div", null, "legend");
        bar.style.background = "linear-gradient(to right, " + info.legend.join(", ") + ")";
        div.appendChild(bar);
        var ends = el("div", null, "legend-ends");
        ends.appendChild(el("span", info.legend_ends[0])); ends.appendChild(el("span", info.legend_ends[1]));
        div.appendChild(ends);
      } else {
        var sw = el("div", null, "legend"); sw.style.background = info.legend[0]; div.appendChild(sw);
      }
      box.appendChild(div);
    });
  }

  // ---------------------------------------------------------------------------------------------- side by side
  var syncing = false;
  function sync(from, to) {
    if (syncing || !to || !from.world.getItemCount() || !to.world.getItemCount()) return;
    syncing = true;
    to.viewport.zoomTo(from.viewport.getZoom(), null, true);
    to.viewport.panTo(from.viewport.getCenter(), true);
    syncing = false;
  }
  function secondViewer() {
    if (!state.viewer2) {
      var v2 = OpenSeadragon({
        element: $("viewer2"), prefixUrl: "vendor/openseadragon/images/", drawer: "canvas", crossOriginPolicy: false,
        maxZoomPixelRatio: 4, gestureSettingsMouse: {clickToZoom: false}, imageLoaderLimit: 6, showNavigationControl: false
      });
      v2.addHandler("tile-loaded", function () { state.loaded2 += 1; });
      v2.addHandler("viewport-change", function () { sync(v2, viewer); });
      viewer.addHandler("viewport-change", function () { sync(viewer, v2); });
      state.viewer2 = v2;
    }
    return state.viewer2;
  }
  function openCompare() {
    var s = state.slides[state.current], key = state.compare;
    var on = !!(s && s.dz && key && s.layers.indexOf(key) >= 0);
    $("viewer2").hidden = !on;
    if (!on) { if (state.viewer2) state.viewer2.close(); return; }
    var v2 = secondViewer(), L = state.layers[key];
    v2.open({tileSource: "dzi/" + enc(s.id) + ".dzi"});
    v2.addOnceHandler("open", function () {
      v2.addTiledImage({tileSource: overlaySource(key, s), opacity: Math.max(L.opacity, 0.6)});
      sync(viewer, v2);
    });
  }
  function renderCompareChoices() {
    var sel = $("compare-select"), keep = state.compare;
    while (sel.options.length > 1) sel.remove(1);
    state.ws.layers.forEach(function (ly) {
      if (ly.model === "_") return;
      var o = el("option", ly.title); o.value = ly.key; sel.appendChild(o);
    });
    sel.value = keep;
  }

  // ---------------------------------------------------------------------------------------------- slide
  function openSlide(i) {
    var s = state.slides[i];
    if (!s) return;
    state.current = i;
    state.tiles = null; state.tilesFor = null;
    Object.keys(state.layers).forEach(function (k) { state.layers[k].item = null; });
    $("slide-title").textContent = s.id + (s.label ? "  (" + s.label + ")" : "");
    $("tile-info").textContent = "click a tile";
    $("hotspots").textContent = "";
    if (window.location.hash !== "#" + enc(s.id)) history.replaceState(null, "", "#" + enc(s.id));
    renderSlideList();
    renderLayers();
    if (!s.dz) { viewer.close(); openCompare(); status(s.unavailable || "slide unavailable"); return; }
    status("");
    viewer.open({tileSource: "dzi/" + enc(s.id) + ".dzi"});
    viewer.addOnceHandler("open", function () {
      if (state.slides[state.current] !== s) return;
      Object.keys(state.layers).forEach(function (k) { if (state.layers[k].on) addOverlay(k); });
    });
    openCompare();
    getJSON("api/tiles/" + enc(s.id) + ".json").then(function (t) {
      if (state.slides[state.current] !== s) return;
      state.tiles = t; state.tilesFor = s.id;
      renderHotspots();
    }).catch(function (e) { status(String(e.message || e)); });
  }

  // ---------------------------------------------------------------------------------------------- tiles
  function findTile(d, x, y) {
    for (var i = 0; i < d.x.length; i++) {
      if (x >= d.x[i] && x < d.x[i] + d.size && y >= d.y[i] && y < d.y[i] + d.size) return i;
    }
    return -1;
  }
  function markTile(x, y, size) {
    var s = state.slides[state.current], item = viewer.world.getItemAt(0), f = s.dz.base_scale;
    if (!item) return;
    if (state.mark) viewer.removeOverlay(state.mark);
    state.mark = el("div", null, "tile-mark");
    viewer.addOverlay({element: state.mark, location: item.imageToViewportRectangle(x / f, y / f, size / f, size / f)});
  }
  function showTile(x0, y0) {
    var t = state.tiles, box = $("tile-info");
    box.textContent = "";
    if (!t) { box.textContent = "tile scores are loading"; return; }
    var table = el("table"), marked = false;
    function row(k, v) { var tr = el("tr"); tr.appendChild(el("td", k)); tr.appendChild(el("td", v)); table.appendChild(tr); }
    row("level-0 point", Math.round(x0) + ", " + Math.round(y0));
    state.ws.models.forEach(function (m) {
      var d = t.models[m.id];
      if (!d) return;
      var i = findTile(d, x0, y0);
      if (i < 0) { row(m.id, "no tile here"); return; }
      if (!marked) { row("tile (x, y, side)", d.x[i] + ", " + d.y[i] + ", " + d.size); markTile(d.x[i], d.y[i], d.size); marked = true; }
      m.classes.forEach(function (c, ci) { row(m.id + ": P(" + c + ")", fmt(d.probs[ci][i])); });
      if (d.evidence) row(m.id + ": evidence", fmt(d.evidence[i]));
    });
    if (t.truth) {
      var j = findTile(t.truth, x0, y0);
      row("ground-truth tumour fraction", j < 0 ? "–" : fmt(t.truth.fraction[j], 2));
    }
    box.appendChild(table);
  }
  viewer.addHandler("canvas-click", function (e) {
    if (!e.quick || state.current < 0) return;
    var item = viewer.world.getItemAt(0), s = state.slides[state.current];
    if (!item || !s.dz) return;
    var p = item.viewportToImageCoordinates(viewer.viewport.pointFromPixel(e.position));
    showTile(p.x * s.dz.base_scale, p.y * s.dz.base_scale);
  });

  function renderHotspots() {
    var list = $("hotspots"), t = state.tiles, key = $("hot-layer").value;
    list.textContent = "";
    if (!t || !key) return;
    var parts = key.split("/"), d = t.models[parts[0]];
    if (!d) return;
    var vals = parts[1] === "evidence" ? d.evidence : d.probs[Number(parts[1].slice(1))];
    if (!vals) return;
    var idx = vals.map(function (_, i) { return i; }).filter(function (i) { return vals[i] !== null; });
    idx.sort(function (a, b) { return vals[b] - vals[a]; });
    idx.slice(0, 10).forEach(function (i) {
      var li = el("li", fmt(vals[i]) + " at (" + d.x[i] + ", " + d.y[i] + ")");
      li.addEventListener("click", function () {
        var s = state.slides[state.current], item = viewer.world.getItemAt(0), f = s.dz.base_scale;
        if (!item) return;
        var pad = d.size * 2;
        viewer.viewport.fitBounds(item.imageToViewportRectangle((d.x[i] - pad) / f, (d.y[i] - pad) / f,
          (d.size + 2 * pad) / f, (d.size + 2 * pad) / f));
        showTile(d.x[i] + d.size / 2, d.y[i] + d.size / 2);
      });
      list.appendChild(li);
    });
  }

  // QuPath GeoJSON (level-0 px, x right, y down) of the tiles of the hot-spot layer at or above its threshold
  function thresholdedGeoJSON() {
    var t = state.tiles, key = $("hot-layer").value, s = state.slides[state.current];
    if (!t || !key || !s) return null;
    var parts = key.split("/"), d = t.models[parts[0]], L = state.layers[key], info = layerInfo(key);
    if (!d) return null;
    var vals = parts[1] === "evidence" ? d.evidence : d.probs[Number(parts[1].slice(1))];
    var lo = Infinity, hi = -Infinity;
    if (parts[1] === "evidence") vals.forEach(function (v) { if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    var feats = [];
    vals.forEach(function (v, i) {
      if (v === null) return;
      var shown = parts[1] === "evidence" ? (hi > lo ? (v - lo) / (hi - lo) : 0) : v;
      if (shown < L.threshold) return;
      var x = d.x[i], y = d.y[i], z = d.size;
      feats.push({type: "Feature", geometry: {type: "Polygon", coordinates: [[[x, y], [x + z, y], [x + z, y + z], [x, y + z], [x, y]]]},
                  properties: {objectType: "tile", classification: {name: info.title, color: [200, 0, 0]},
                               measurements: {value: v}}});
    });
    return {type: "FeatureCollection", features: feats,
            properties: {slide_id: s.id, layer: key, threshold: L.threshold}};
  }
  state.thresholdedGeoJSON = thresholdedGeoJSON;

  // ---------------------------------------------------------------------------------------------- set-up
  function modelChanged() {
    var sel = $("hot-layer");
    sel.textContent = "";
    var m = null;
    state.ws.models.forEach(function (x) { if (x.id === state.model) m = x; });
    if (m) m.layers.forEach(function (k) {
      if (k.split("/")[1] === "pixel") return;
      var o = el("option", layerInfo(k).title); o.value = k; sel.appendChild(o);
    });
    renderSlideList();
    renderHotspots();
  }
  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "n" || e.key === "PageDown") { step(1); e.preventDefault(); }
    else if (e.key === "p" || e.key === "PageUp") { step(-1); e.preventDefault(); }
  });
  $("sort-select").addEventListener("change", function () { state.sort = this.value; renderSlideList(); });
  $("model-select").addEventListener("change", function () { state.model = this.value; modelChanged(); });
  $("hot-layer").addEventListener("change", renderHotspots);
  $("compare-select").addEventListener("change", function () { state.compare = this.value; openCompare(); });
  $("save-geojson").addEventListener("click", function () {
    var doc = thresholdedGeoJSON();
    if (!doc) return;
    var a = el("a");
    a.href = URL.createObjectURL(new Blob([JSON.stringify(doc)], {type: "application/geo+json"}));
    a.download = doc.properties.slide_id + "_" + doc.properties.layer.replace("/", "_") + "_t" +
      doc.properties.threshold.toFixed(2) + ".geojson";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 1000);
  });
  $("save-png").addEventListener("click", function () {
    var canvas = viewer.drawer && viewer.drawer.canvas;
    if (!canvas || !canvas.toDataURL) return;
    var a = el("a"); a.href = canvas.toDataURL("image/png");
    a.download = (state.slides[state.current] || {id: "view"}).id + ".png";
    document.body.appendChild(a); a.click(); a.remove();
  });

  getJSON("api/workspace.json").then(function (ws) {
    state.ws = ws; state.slides = ws.slides;
    $("ws-name").textContent = ws.workspace + (ws.static ? " (static export)" : "");
    ws.layers.forEach(function (ly) {
      var first = ws.models.length && ws.models[0].layers[0] === ly.key;
      state.layers[ly.key] = {on: first || ly.key === "_/truth", opacity: ly.graded ? 0.6 : 0.45,
                              threshold: ly.threshold, graded: ly.graded, item: null};
    });
    var sel = $("model-select");
    ws.models.forEach(function (m) { var o = el("option", m.id + " (" + m.method + ")"); o.value = m.id; sel.appendChild(o); });
    state.model = ws.models.length ? ws.models[0].id : null;
    renderCompareChoices();
    modelChanged();
    var want = decodeURIComponent(window.location.hash.slice(1)), start = 0;
    ws.slides.forEach(function (s, i) { if (s.id === want) start = i; });
    if (!want && state.order.length) start = state.order[0];
    openSlide(start);
  }).catch(function (e) { status(String(e.message || e)); });
})();
