"""Driving ComfyUI's own web frontend in a headless Chromium (Playwright), for tests/test_browser_comfyui.py.

The browser is the Debian ``chromium`` package (``KIWI_CHROMIUM``, default /usr/bin/chromium), never a
download. :class:`FrontendPage` opens the server's page, loads a UI-format workflow with the frontend's own
``app.loadGraphData`` (the call behind a file drop and the template browser; loaded as the template browser
does, which fits the view to the graph), reports what the frontend
complained about (dialogs, toasts, console errors) and what its graph holds (unregistered node types, combo
values not in their lists, numbers out of range, broken links), takes a screenshot and queues the graph with
``app.queuePrompt`` (the Queue button's call).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CHROMIUM = os.environ.get("KIWI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1920, "height": 1080}
THUMBNAIL_SIZE = (512, 384)


def browser_available() -> str | None:
    """None when a browser test can run here, else why not."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set KIWI_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e .[browser])"
    return None


# The graph as the frontend holds it after loading: every problem a user would see as a red node, an
# empty/invalid widget or a dangling link. Runs in the page.
_GRAPH_PROBLEMS_JS = """() => {
  const app = window.app, LG = window.LiteGraph, graph = app.rootGraph ?? app.graph;
  const problems = [];
  const registered = LG?.registered_node_types ?? {};
  const typesMatch = (a, b) => !a || !b || a === b || a === '*' || b === '*' ||
      String(a).split(',').some(t => String(b).split(',').includes(t));
  for (const node of graph._nodes) {
    const where = `${node.type} #${node.id}`;
    if (!(node.type in registered)) problems.push(`${where}: node type not registered (missing node)`);
    if (node.has_errors) problems.push(`${where}: the frontend marked it as having errors`);
    for (const w of node.widgets ?? []) {
      if (w.type === 'combo') {
        let values = w.options?.values;
        if (typeof values === 'function') values = values(w, node);
        if (Array.isArray(values) && !values.includes(w.value))
          problems.push(`${where}: widget ${w.name}=${JSON.stringify(w.value)} is not in its list`);
      } else if (w.type === 'number' && typeof w.value === 'number') {
        const o = w.options ?? {};
        if (Number.isNaN(w.value) || (o.min != null && w.value < o.min) || (o.max != null && w.value > o.max))
          problems.push(`${where}: widget ${w.name}=${w.value} outside [${o.min}, ${o.max}]`);
      } else if (w.value === undefined && w.type !== 'button' && !String(w.type).startsWith('DOM')) {
        problems.push(`${where}: widget ${w.name} has no value`);
      }
    }
  }
  const links = graph.links instanceof Map ? [...graph.links.values()] : Object.values(graph.links ?? {});
  for (const link of links) {
    if (!link) continue;
    const origin = graph.getNodeById(link.origin_id), target = graph.getNodeById(link.target_id);
    if (!origin || !target) { problems.push(`link ${link.id}: an end node does not exist`); continue; }
    const out = origin.outputs?.[link.origin_slot], inp = target.inputs?.[link.target_slot];
    if (!out || !inp) { problems.push(`link ${link.id}: slot missing`); continue; }
    if (inp.link !== link.id) problems.push(`link ${link.id}: ${target.type} input ${inp.name} does not hold it`);
    if (!(out.links ?? []).includes(link.id)) problems.push(`link ${link.id}: ${origin.type} output does not list it`);
    if (!typesMatch(out.type, inp.type))
      problems.push(`link ${link.id}: ${origin.type}.${out.name} (${out.type}) -> ${target.type}.${inp.name} (${inp.type})`);
  }
  return {problems, nodes: graph._nodes.length, links: links.filter(Boolean).length};
}"""

# The screen rectangle around all nodes and groups (litegraph: screen = (graph pos + offset) · scale), padded.
_NODE_BOUNDS_JS = """() => {
  const app = window.app, graph = app.rootGraph ?? app.graph, ds = app.canvas.ds, pad = 16;
  const rects = [...graph._nodes.map(n => [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30]),
                 ...(graph._groups ?? []).map(g => g._bounding ?? g.bounding)];
  const x0 = Math.min(...rects.map(r => r[0])), y0 = Math.min(...rects.map(r => r[1]));
  const x1 = Math.max(...rects.map(r => r[0] + r[2])), y1 = Math.max(...rects.map(r => r[1] + r[3]));
  const sx = v => (v + ds.offset[0]) * ds.scale, sy = v => (v + ds.offset[1]) * ds.scale;
  const left = Math.max(0, sx(x0) - pad), top = Math.max(0, sy(y0) - pad);
  return {x: left, y: top, width: Math.min(innerWidth, sx(x1) + pad) - left,
          height: Math.min(innerHeight, sy(y1) + pad) - top};
}"""

# Visible dialogs and toasts: the frontend shows missing nodes / models, load errors and prompt errors there.
_MESSAGES_JS = """() => [...document.querySelectorAll('.p-dialog, .p-toast-message, [role=dialog], [role=alert]')]
  .filter(e => e.offsetParent !== null || getComputedStyle(e).position === 'fixed')
  .map(e => e.innerText.trim()).filter(Boolean)"""


class FrontendPage:
    """One Chromium with one ComfyUI page; use as a context manager."""

    def __init__(self, url: str):
        self.url = url
        self.console: list[str] = []
        self._profile = tempfile.mkdtemp(prefix="kiwi-chromium-")

    def __enter__(self) -> "FrontendPage":
        from playwright.sync_api import sync_playwright
        self._pw = sync_playwright().start()
        self._context = self._pw.chromium.launch_persistent_context(
            self._profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT)
        self.page = self._context.pages[0] if self._context.pages else self._context.new_page()
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.page.goto(self.url, wait_until="domcontentloaded", timeout=180_000)
        self.page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                                    "Object.keys(window.LiteGraph.registered_node_types).length > 50",
                                    timeout=180_000, polling=500)
        self.page.wait_for_timeout(2000)
        self.close_dialogs()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._context.close()
        finally:
            self._pw.stop()
            shutil.rmtree(self._profile, ignore_errors=True)

    def close_dialogs(self) -> None:
        self.page.keyboard.press("Escape")
        self.page.evaluate("() => document.querySelectorAll('.p-toast-message').forEach(e => e.remove())")

    def messages(self) -> list[str]:
        return self.page.evaluate(_MESSAGES_JS)

    def load(self, workflow: dict) -> dict:
        """Load ``workflow`` as a user would; returns {problems, messages, console, nodes, links}."""
        self.close_dialogs()
        start = len(self.console)
        self.page.evaluate("async wf => { await window.app.loadGraphData(wf, true, true, null, "
                           "{openSource: 'template'}); }", workflow)
        self.page.wait_for_timeout(1500)             # dialogs and toasts appear asynchronously
        state = self.page.evaluate(_GRAPH_PROBLEMS_JS)
        state["messages"] = self.messages()
        state["console"] = self.errors_since(start)
        return state

    def errors_since(self, start: int) -> list[str]:
        """Console errors after ``start``; failed fetches are the server's 404s for optional user files."""
        return [m for m in self.console[start:] if m.startswith(("error", "pageerror"))
                and "Failed to load resource" not in m]

    def screenshot(self, path: Path, thumbnail: Path | None = None) -> None:
        """The page as the user sees it; ``thumbnail``: the graph alone (focus mode, cropped to the nodes),
        small, as a JPEG for the template browser."""
        import io

        from PIL import Image
        self.close_dialogs()
        self._redraw()
        shot = Image.open(io.BytesIO(self.page.screenshot())).convert("RGB")
        shot.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)   # a third of the bytes
        if thumbnail is None:
            return
        self.page.evaluate("async () => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
        try:
            self._redraw()
            box = self.page.evaluate(_NODE_BOUNDS_JS)
            png = self.page.screenshot(clip=box)
        finally:
            self.page.evaluate("async () => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
        img = Image.open(io.BytesIO(png)).convert("RGB")
        img.thumbnail(THUMBNAIL_SIZE)
        img.save(thumbnail, "JPEG", quality=85, optimize=True)

    def _redraw(self) -> None:
        self.page.evaluate("() => window.app.canvas.setDirty(true, true)")
        self.page.wait_for_timeout(700)

    def image_sizes(self, urls: list[str]) -> dict:
        """{url: [width, height]} of images as the page loads them (0 × 0: not an image / not found)."""
        return self.page.evaluate("""async urls => Object.fromEntries(await Promise.all(urls.map(u =>
            new Promise(ok => { const im = new Image(); im.onload = () => ok([u, [im.naturalWidth, im.naturalHeight]]);
                                im.onerror = () => ok([u, [0, 0]]); im.src = u; }))))""", urls)

    def queue(self) -> None:
        """Queue the loaded graph as the Queue button does (the frontend converts it to the API prompt)."""
        start = len(self.console)
        self.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        self.page.wait_for_timeout(500)
        errors = self.errors_since(start)
        node_errors = self.page.evaluate("() => window.app.lastNodeErrors ?? null")
        if errors or node_errors:
            raise AssertionError(f"queueing failed: node errors {node_errors}, console {errors}, "
                                 f"dialogs {self.messages()}")
