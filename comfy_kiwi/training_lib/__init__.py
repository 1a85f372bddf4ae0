"""Library pieces for training (not the trainer): Kiwi-Edit's training numerics (``kiwi_numerics``: timesteps, loss
weights, dataset mixing), a trainable DiT LoRA beside a frozen bf16/fp8 DiT (``dit_lora_train``), block swap for
training (``block_swap_training``) and Kiwi checkpoint export (``checkpoint_export``).

They live in the library because more than the trainer application uses them: the toy world's in-memory driver
(``toy/train.py``), RVEDiT's streams, the memory probes. The trainer *application* — the ``python -m trainer`` command
with its config, loop, datasets and per-method hooks — is the top-level ``trainer/`` package (installed as
``comfy_kiwi_trainer``); it imports this package, never the other way round."""
