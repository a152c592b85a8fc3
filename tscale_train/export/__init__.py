"""Export a run to the Hugging Face Hub: the LoRA adapter with a model card, and the searched pairs.

- `adapter`: the adapter folder in diffusers' format, its model card, the push (`export_run`);
- `comfyui`: the same adapter in the original FLUX.2 layout that ComfyUI and BFL-style tools load;
- `dataset`: the pair store as a Pick-a-Pic-layout dataset with its own card.
"""
