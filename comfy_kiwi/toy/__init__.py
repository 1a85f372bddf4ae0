"""The toy editing world: procedural shape videos with templated edits (``world``), a programmatic
judge (``judge``), a lossless patch codec (``codec``), small models trained here on a CPU (``models``,
``train``) and the embedded default model (``release.DEFAULT_MODEL_DIR``). See docs/TOY_BENCHMARK.md."""
