"""The HTML/JS of the self-contained point-cloud viewer page that `volt.viz.html.write_viewer` fills in.

`PAGE` has two placeholders: `__TITLE__` (HTML-escaped text) and `__DATA__` (a JSON object, with "</"
escaped, holding base64 little-endian float32 positions and one base64 uint8 RGB array per colouring).
The script draws the points with WebGL (one `gl.POINTS` call, size attenuated with distance), or, when
WebGL is unavailable or `renderer=2d` is in the URL, with a z-buffered 2D-canvas rasterizer. With normals
(base64 int8, optional) points facing away from the camera are culled, so a room's near walls do not hide
its inside (key "b" toggles). No network,
no libraries. Orbit with the left button, pan with the right button (or shift), zoom with the wheel,
double-click resets; buttons (and keys 1-9) switch the colouring through `setMode`, which the URL
parameter `mode=<key>` (query or hash) also calls at load. After every frame it sets
`document.body.dataset.drawn` (the colouring drawn), `.renderer` and `.frames`, for scripted checks.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
  html, body { margin: 0; height: 100%; overflow: hidden; background: #1e1f22; font: 13px sans-serif; color: #eee; }
  #view { display: block; width: 100vw; height: 100vh; cursor: grab; touch-action: none; }
  .panel { position: absolute; background: rgba(20, 20, 24, 0.78); border-radius: 6px; padding: 8px 10px; }
  #bar { top: 10px; left: 10px; }
  #bar h1 { font-size: 14px; margin: 0 0 6px 0; font-weight: 600; }
  #bar button { margin: 0 4px 0 0; padding: 4px 9px; border: 1px solid #666; border-radius: 4px;
                background: #33353a; color: #eee; cursor: pointer; font: inherit; }
  #bar button.on { background: #4a79c9; border-color: #8fb0ea; }
  #legend { top: 10px; right: 10px; max-height: 85vh; overflow-y: auto; }
  #legend:empty { display: none; }
  #legend div { white-space: nowrap; line-height: 18px; }
  #legend span { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: -1px;
                 border: 1px solid #000; }
  #help { bottom: 10px; left: 10px; color: #bbb; font-size: 12px; }
</style>
</head>
<body>
<canvas id="view"></canvas>
<div id="bar" class="panel"><h1>__TITLE__</h1><div id="buttons"></div></div>
<div id="legend" class="panel"></div>
<div id="help" class="panel">drag: rotate &middot; right-drag / shift-drag: pan &middot; wheel: zoom &middot;
  double-click: reset &middot; keys 1-9: colouring &middot; +/-: point size &middot; b: back faces
  <span id="stats"></span></div>
<script type="application/json" id="volt-data">__DATA__</script>
<script>
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("volt-data").textContent);
  function bytes(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  const n = data.count;
  const pos = new Float32Array(bytes(data.positions).buffer);  // (n * 3), centred at the origin
  const colors = {};
  for (const layer of data.layers) colors[layer.key] = bytes(layer.colors);  // (n * 3) RGB
  const normals = data.normals ? new Int8Array(bytes(data.normals).buffer) : null;  // (n * 3), x127
  const params = new URLSearchParams(location.search.slice(1) + "&" + location.hash.slice(1));
  const canvas = document.getElementById("view");
  const home = { yaw: -2.2, pitch: 0.6, dist: 2.5 * data.radius, target: [0, 0, 0] };
  const cam = Object.assign({}, home, { target: home.target.slice() });
  const fov = 45 * Math.PI / 180;
  let mode = data.layers[0].key, pointScale = 1.0, frames = 0, pending = false, cull = normals !== null;

  // --- camera: z-up orbit around `target`; column-major 4x4 matrices as WebGL expects -----------------
  function eye() {
    const c = Math.cos(cam.pitch);
    return [cam.target[0] + cam.dist * c * Math.cos(cam.yaw), cam.target[1] + cam.dist * c * Math.sin(cam.yaw),
            cam.target[2] + cam.dist * Math.sin(cam.pitch)];
  }
  function sub(a, b) { return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]; }
  function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
  function norm(a) { const l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; }
  function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
  function axes() {  // camera right, up, back (unit vectors)
    const e = eye(), back = norm(sub(e, cam.target)), right = norm(cross([0, 0, 1], back));
    return [right, cross(back, right), back, e];
  }
  function mvp(aspect) {
    const [r, u, b, e] = axes();
    const near = cam.dist * 0.01, far = cam.dist + 4 * data.radius, f = 1 / Math.tan(fov / 2);
    const view = [r[0], u[0], b[0], 0, r[1], u[1], b[1], 0, r[2], u[2], b[2], 0,
                  -dot(r, e), -dot(u, e), -dot(b, e), 1];
    const proj = [f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) / (near - far), -1,
                  0, 0, 2 * far * near / (near - far), 0];
    const m = new Float32Array(16);
    for (let c = 0; c < 4; c++) for (let row = 0; row < 4; row++) {
      let s = 0;
      for (let k = 0; k < 4; k++) s += proj[k * 4 + row] * view[c * 4 + k];
      m[c * 4 + row] = s;
    }
    return m;
  }
  // Points as wide on screen as their spacing in the world, so surfaces look closed at any zoom.
  function pixelsPerUnitAtDepth1() { return canvas.height / (2 * Math.tan(fov / 2)); }
  // Farther points are drawn darker (up to SHADE), which makes flat-coloured surfaces read as 3D.
  const SHADE = 0.3;

  // --- renderer 1: WebGL ------------------------------------------------------------------------------
  function webglRenderer() {
    const gl = canvas.getContext("webgl", { preserveDrawingBuffer: true, antialias: false });
    if (!gl) return null;
    // A point whose normal faces away from the eye is moved outside the clip volume (culled).
    const vs = "attribute vec3 p; attribute vec3 c; attribute vec3 q; uniform mat4 m; uniform float s;" +
      "uniform vec3 e; uniform vec2 d; varying vec3 v; void main() { gl_Position = m * vec4(p, 1.0);" +
      "v = c * (1.0 - " + SHADE.toFixed(3) + " * clamp((gl_Position.w - d.x) / d.y, 0.0, 1.0));" +
      "gl_PointSize = clamp(s / gl_Position.w, 2.0, 24.0);" +
      "if (dot(q, e - p) < 0.0) gl_Position = vec4(2.0, 2.0, 2.0, 1.0); }";
    const fs = "precision mediump float; varying vec3 v; void main() { gl_FragColor = vec4(v, 1.0); }";
    function shader(type, src) {
      const sh = gl.createShader(type);
      gl.shaderSource(sh, src);
      gl.compileShader(sh);
      if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(sh));
      return sh;
    }
    const prog = gl.createProgram();
    gl.attachShader(prog, shader(gl.VERTEX_SHADER, vs));
    gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, fs));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    const locP = gl.getAttribLocation(prog, "p"), locC = gl.getAttribLocation(prog, "c");
    const locQ = gl.getAttribLocation(prog, "q"), locE = gl.getUniformLocation(prog, "e");
    const locM = gl.getUniformLocation(prog, "m"), locS = gl.getUniformLocation(prog, "s");
    const locD = gl.getUniformLocation(prog, "d");
    const posBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, posBuf);
    gl.bufferData(gl.ARRAY_BUFFER, pos, gl.STATIC_DRAW);
    const normalBuf = normals ? gl.createBuffer() : null;
    if (normals) {
      gl.bindBuffer(gl.ARRAY_BUFFER, normalBuf);
      gl.bufferData(gl.ARRAY_BUFFER, normals, gl.STATIC_DRAW);
    }
    const colorBufs = {};
    return {
      name: "webgl",
      draw() {
        gl.viewport(0, 0, canvas.width, canvas.height);
        gl.clearColor(0.118, 0.122, 0.133, 1);
        gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
        gl.enable(gl.DEPTH_TEST);
        gl.useProgram(prog);
        if (!colorBufs[mode]) {  // uploaded on first use
          colorBufs[mode] = gl.createBuffer();
          gl.bindBuffer(gl.ARRAY_BUFFER, colorBufs[mode]);
          gl.bufferData(gl.ARRAY_BUFFER, colors[mode], gl.STATIC_DRAW);
        }
        gl.bindBuffer(gl.ARRAY_BUFFER, posBuf);
        gl.enableVertexAttribArray(locP);
        gl.vertexAttribPointer(locP, 3, gl.FLOAT, false, 0, 0);
        gl.bindBuffer(gl.ARRAY_BUFFER, colorBufs[mode]);
        gl.enableVertexAttribArray(locC);
        gl.vertexAttribPointer(locC, 3, gl.UNSIGNED_BYTE, true, 0, 0);
        if (locQ >= 0 && cull) {
          gl.bindBuffer(gl.ARRAY_BUFFER, normalBuf);
          gl.enableVertexAttribArray(locQ);
          gl.vertexAttribPointer(locQ, 3, gl.BYTE, true, 0, 0);
        } else if (locQ >= 0) {
          gl.disableVertexAttribArray(locQ);
          gl.vertexAttrib3f(locQ, 0, 0, 0);  // zero normal: never culled
        }
        gl.uniform3fv(locE, eye());
        gl.uniform2f(locD, cam.dist - data.radius, 2 * data.radius);
        gl.uniformMatrix4fv(locM, false, mvp(canvas.width / canvas.height));
        gl.uniform1f(locS, data.pointSize * pointScale * pixelsPerUnitAtDepth1());
        gl.drawArrays(gl.POINTS, 0, n);
      },
    };
  }

  // --- renderer 2: 2D canvas, z-buffered square splats -------------------------------------------------
  function canvasRenderer() {
    const ctx = canvas.getContext("2d");
    return {
      name: "2d",
      draw() {
        const w = canvas.width, h = canvas.height, m = mvp(w / h), img = ctx.createImageData(w, h);
        const px = new Uint32Array(img.data.buffer), zbuf = new Float32Array(w * h).fill(Infinity);
        px.fill(0xff221f1e);  // ABGR of the background (little-endian)
        const col = colors[mode], size = data.pointSize * pointScale * pixelsPerUnitAtDepth1(), e = eye();
        for (let i = 0; i < n; i++) {
          const x = pos[3 * i], y = pos[3 * i + 1], z = pos[3 * i + 2];
          if (cull && normals[3 * i] * (e[0] - x) + normals[3 * i + 1] * (e[1] - y) +
                      normals[3 * i + 2] * (e[2] - z) < 0) continue;  // facing away: culled
          const cw = m[3] * x + m[7] * y + m[11] * z + m[15];
          if (cw <= 0) continue;
          const cz = (m[2] * x + m[6] * y + m[10] * z + m[14]) / cw;
          if (cz < -1 || cz > 1) continue;
          const sx = ((m[0] * x + m[4] * y + m[8] * z + m[12]) / cw + 1) * 0.5 * w;
          const sy = (1 - (m[1] * x + m[5] * y + m[9] * z + m[13]) / cw) * 0.5 * h;
          const k = Math.max(2, Math.min(24, Math.round(size / cw)));
          const x0 = Math.round(sx - k / 2), y0 = Math.round(sy - k / 2);
          const f = 1 - SHADE * Math.min(1, Math.max(0, (cw - cam.dist + data.radius) / (2 * data.radius)));
          const rgba = 0xff000000 | ((col[3 * i + 2] * f) << 16) | ((col[3 * i + 1] * f) << 8) | (col[3 * i] * f);
          for (let yy = Math.max(0, y0); yy < Math.min(h, y0 + k); yy++) {
            for (let xx = Math.max(0, x0); xx < Math.min(w, x0 + k); xx++) {
              const j = yy * w + xx;
              if (cz < zbuf[j]) { zbuf[j] = cz; px[j] = rgba; }
            }
          }
        }
        ctx.putImageData(img, 0, 0);
      },
    };
  }

  let renderer = null;
  if (params.get("renderer") !== "2d") {
    try {
      renderer = webglRenderer();
    } catch (err) {
      console.warn("WebGL unavailable, using the 2D canvas:", err.message);
    }
  }
  if (!renderer) renderer = canvasRenderer();

  function draw() {
    pending = false;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr)), h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    renderer.draw();
    frames += 1;
    document.body.dataset.drawn = mode;
    document.body.dataset.renderer = renderer.name;
    document.body.dataset.frames = String(frames);
  }
  function redraw() { if (!pending) { pending = true; requestAnimationFrame(draw); } }

  // --- colourings, buttons, legend -----------------------------------------------------------------------
  const buttons = document.getElementById("buttons"), legend = document.getElementById("legend");
  function setMode(key) {
    if (!(key in colors)) return false;
    mode = key;
    for (const b of buttons.children) b.classList.toggle("on", b.dataset.mode === key);
    legend.replaceChildren();
    for (const [name, hex] of (data.legends[key] || [])) {
      const row = document.createElement("div"), swatch = document.createElement("span");
      swatch.style.background = hex;
      row.append(swatch, document.createTextNode(name));
      legend.append(row);
    }
    redraw();
    return true;
  }
  data.layers.forEach(function (layer) {
    const b = document.createElement("button");
    b.textContent = layer.label;
    b.dataset.mode = layer.key;
    b.addEventListener("click", function () { setMode(layer.key); });
    buttons.append(b);
  });
  document.getElementById("stats").textContent = "\u00b7 " + n.toLocaleString() + " of " +
    data.total.toLocaleString() + " points, " + renderer.name;

  // --- interaction ---------------------------------------------------------------------------------------
  let drag = null;
  canvas.addEventListener("pointerdown", function (e) {
    drag = { x: e.clientX, y: e.clientY, pan: e.button === 2 || e.shiftKey };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", function (e) {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    drag.x = e.clientX;
    drag.y = e.clientY;
    if (drag.pan) {
      const [r, u] = axes(), s = cam.dist * 0.0015;
      for (let i = 0; i < 3; i++) cam.target[i] += (-dx * r[i] + dy * u[i]) * s;
    } else {
      cam.yaw -= dx * 0.008;
      cam.pitch = Math.max(-1.55, Math.min(1.55, cam.pitch + dy * 0.008));
    }
    redraw();
  });
  canvas.addEventListener("pointerup", function () { drag = null; });
  canvas.addEventListener("contextmenu", function (e) { e.preventDefault(); });
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    cam.dist = Math.max(data.radius * 0.02, Math.min(data.radius * 50, cam.dist * Math.exp(e.deltaY * 0.001)));
    redraw();
  }, { passive: false });
  canvas.addEventListener("dblclick", function () {
    Object.assign(cam, home, { target: home.target.slice() });
    redraw();
  });
  window.addEventListener("keydown", function (e) {
    const i = parseInt(e.key, 10);
    if (i >= 1 && i <= data.layers.length) setMode(data.layers[i - 1].key);
    else if (e.key === "+" || e.key === "=") { pointScale *= 1.25; redraw(); }
    else if (e.key === "-") { pointScale /= 1.25; redraw(); }
    else if (e.key === "b" && normals) { cull = !cull; redraw(); }
  });
  window.addEventListener("resize", redraw);
  window.addEventListener("hashchange", function () {
    const p = new URLSearchParams(location.hash.slice(1));
    if (p.get("mode")) setMode(p.get("mode"));
  });

  window.voltViewer = { setMode: setMode, redraw: redraw, renderer: renderer.name, camera: cam };
  if (!setMode(params.get("mode") || data.defaultMode)) setMode(data.layers[0].key);
})();
</script>
</body>
</html>
"""
