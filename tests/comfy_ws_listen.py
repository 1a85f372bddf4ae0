"""Run with ComfyUI's Python (it has aiohttp): print every JSON message of ComfyUI's websocket, one a line.

    python tests/comfy_ws_listen.py http://127.0.0.1:PORT CLIENT_ID

Prints ``{"type": "connected"}`` once connected; runs until the server closes or the process is stopped.
Used by tests/test_real_comfyui.py to watch ``progress`` messages.
"""

import asyncio
import json
import sys

import aiohttp


async def listen(url: str, client_id: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws', 1)}/ws?clientId={client_id}") as ws:
            print(json.dumps({"type": "connected"}), flush=True)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    print(msg.data, flush=True)


asyncio.run(listen(sys.argv[1], sys.argv[2]))
