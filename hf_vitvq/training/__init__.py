"""Reusable parts of tokenizer training, as `diffusers.training_utils` is for diffusers' scripts: losses and their
networks, data streams, checkpointing, evaluation, Hub pushing and model cards. The launchable scripts stay in
`training/` (`accelerate launch training/train.py ...`) and import from here.

Nothing in this subpackage is imported by `import hf_vitvq`, by the Auto classes or by saved remote-code folders.
"""
