"""Layer 5: every shipped workflow in ComfyUI's own web frontend, in a headless Chromium, as a user opens it.

Runs where ``COMFYUI_PATH`` points at a ComfyUI checkout (its frontend package installed in COMFYUI_PYTHON)
and a Chromium plus the ``playwright`` package are present (``pip install -e .[browser]``,
``apt-get install chromium``); skipped otherwise. For each workflow in workflows/: load it with the
frontend's own load call, assert the frontend reports no missing node, no widget value outside its list
or range and no broken link (graph state, dialogs, toasts, console), take a screenshot, queue it from the
page, wait for the run and check its output files. Tiny stand-in models are built by the test
(tests/comfy_server.py). With ``KIWI_SAVE_SCREENSHOTS=1`` the screenshots are written to
docs/images/browser/ and the template-browser thumbnails to workflows/<name>.jpg.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import comfy_browser as B
import comfy_server as S

ROOT = Path(__file__).resolve().parents[1]
COMFYUI = os.environ.get("COMFYUI_PATH")
SAVE = os.environ.get("KIWI_SAVE_SCREENSHOTS") == "1"
SHOTS = ROOT / "docs" / "images" / "browser"
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
_why_not = None if COMFYUI else "set COMFYUI_PATH to a ComfyUI checkout to run the browser tests"
_why_not = _why_not or B.browser_available()
pytestmark = [pytest.mark.comfyui, pytest.mark.browser, pytest.mark.skipif(bool(_why_not), reason=_why_not or "")]
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui-browser")
    S.prepare_base(base)
    try:
        with S.running_server(base, COMFYUI) as srv:
            # a returning user: no first-run template dialog over the canvas, no minimap over the graph, and
            # node text drawn at any zoom (the screenshots show whole graphs)
            for setting, value in (("Comfy.TutorialCompleted", True), ("Comfy.Minimap.Visible", False),
                                   ("LiteGraph.Canvas.MinFontSizeForLOD", 0)):
                assert S.request(f"{srv['url']}/settings/{setting}", value)[0] == 200
            yield srv
    except S.ServerError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def page(server):
    with B.FrontendPage(server["url"]) as fp:
        yield fp
    if RESULTS:
        print("\n" + results_table())


def results_table() -> str:
    rows = ["| workflow | loaded without errors | queued | finished | output files |", "|---|---|---|---|---|"]
    for name, r in sorted(RESULTS.items()):
        rows.append(f"| {name} | {r.get('loaded', '-')} | {r.get('queued', '-')} | {r.get('finished', '-')} | "
                    f"{', '.join(r.get('outputs', [])) or '-'} |")
    return "\n".join(rows)


def _history_ids(server) -> set:
    return set(S.request(server["url"] + "/history")[1] or {})


def _wait_new_entry(server, before: set) -> dict:
    deadline = time.monotonic() + S.RUN_TIMEOUT
    while time.monotonic() < deadline:
        new = _history_ids(server) - before
        if new:
            return S.wait_history(server, new.pop())
        time.sleep(1)
    pytest.fail(f"the queued workflow never reached the history:\n{S.log_tail(server['log'])}")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_in_the_frontend(server, page, path, tmp_path):
    name = path.stem
    result = RESULTS.setdefault(name, {})
    state = page.load(json.loads(path.read_text()))
    assert state["nodes"] > 0 and not state["problems"], "\n".join(state["problems"])
    assert not state["messages"], f"the frontend showed: {state['messages']}"
    assert not state["console"], f"console errors while loading: {state['console']}"
    result["loaded"] = f"yes ({state['nodes']} nodes, {state['links']} links)"

    shot_dir = SHOTS if SAVE else tmp_path
    shot_dir.mkdir(parents=True, exist_ok=True)
    page.screenshot(shot_dir / f"{name}.png", thumbnail=path.with_suffix(".jpg") if SAVE else None)

    before = _history_ids(server)
    page.queue()
    result["queued"] = "yes"
    entry = _wait_new_entry(server, before)
    messages = json.dumps(entry["status"].get("messages"), indent=1)[-3000:]
    assert entry["status"]["status_str"] == "success", messages + "\n" + S.log_tail(server["log"])
    result["finished"] = "success"
    saved = S.saved_files(entry)
    assert saved, f"nothing saved: {entry['outputs']}"
    for item in saved:
        assert S.saved_path(server, item).stat().st_size > 0, item
    counts: dict = {}
    for item in saved:                       # previews go to temp/, saved files to output/
        key = (item.get("type", "output"), Path(item["filename"]).suffix)
        counts[key] = counts.get(key, 0) + 1
    result["outputs"] = [f"{n} {suffix} in {kind}/" for (kind, suffix), n in sorted(counts.items())]


def test_template_browser_lists_every_workflow_with_its_thumbnail(server, page):
    """ComfyUI lists custom-node templates from the pack's workflows/ folder and the frontend shows
    /api/workflow_templates/<pack>/<name>.jpg as each one's thumbnail."""
    status, listed = S.request(server["url"] + "/workflow_templates")
    assert status == 200 and sorted(listed.get(S.PACK_NAME, [])) == sorted(p.stem for p in WORKFLOWS), listed
    urls = [f"{server['url']}/api/workflow_templates/{S.PACK_NAME}/{p.stem}.jpg" for p in WORKFLOWS]
    sizes = page.image_sizes(urls)
    broken = [u for u in urls if sizes[u][0] < 64 or sizes[u][1] < 36]
    assert not broken, f"thumbnails the template browser cannot show: {broken}"


def test_the_checks_see_a_broken_workflow(page):
    """The same checks on a workflow broken three ways: an unknown node, a combo value not in its list, and a
    link whose ends have different types. Each must be reported (the checks can fail)."""
    wf = json.loads((ROOT / "workflows" / "kiwi_all_parts.json").read_text())
    nodes = {n["type"]: n for n in wf["nodes"]}
    nodes["KiwiVAELoader"]["widgets_values"][0] = "no_such_vae.safetensors"
    nodes["Note"]["type"] = "KiwiNoSuchNode"
    # the sampler's KIWI_LATENT wired into Kiwi VAE Decode's vae input (KIWI_VAE) instead of its latent input
    decode = nodes["KiwiVAEDecode"]
    vae_in, latent_in = decode["inputs"][0], decode["inputs"][1]
    wf["links"] = [lk for lk in wf["links"] if lk[0] != vae_in["link"]]
    for node in wf["nodes"]:
        for out in node.get("outputs", []):
            out["links"] = [i for i in out.get("links") or [] if i != vae_in["link"]]
    link = next(lk for lk in wf["links"] if lk[0] == latent_in["link"])
    link[4], vae_in["link"], latent_in["link"] = 0, link[0], None
    state = page.load(wf)
    problems = "\n".join(state["problems"])
    assert "KiwiNoSuchNode" in problems and "missing node" in problems, problems
    assert "vae_name=\"no_such_vae.safetensors\" is not in its list" in problems, problems
    assert "(KIWI_LATENT) -> " in problems, problems
    page.close_dialogs()
