"""The comfy-kiwi trainer application: ``python -m trainer train | export | memory`` (installed as the
``comfy_kiwi_trainer`` package, command ``comfy-kiwi-train``): configs and presets, the training loop, datasets and
caches, and one method class per paper (``trainer/methods/``).

The numerics and training parts it runs live in the library (``comfy_kiwi.training_lib``: Kiwi-Edit's loss and timestep
numerics, the trainable DiT LoRA, block swap for training, checkpoint export), so the toy world and the tests use
the same code; the library never imports this package."""
