"""Package layout (everything else is in pyproject.toml).

``comfy_kiwi`` and its subpackages install under their own names. The trainer lives in the checkout's
``trainer/`` folder (``python -m trainer`` from the checkout) but installs as ``comfy_kiwi_trainer``
(console command ``comfy-kiwi-train``): a generic top-level ``trainer`` package would collide with
other projects' in a shared environment such as ComfyUI's.
"""

from setuptools import find_packages, setup

TRAINER = "comfy_kiwi_trainer"

setup(
    packages=find_packages(include=["comfy_kiwi", "comfy_kiwi.*"])
    + [TRAINER] + [f"{TRAINER}.{p}" for p in find_packages("trainer")],
    package_dir={TRAINER: "trainer"},
)
