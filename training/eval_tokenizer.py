"""Evaluate a tokenizer: rFID, IS, PSNR, SSIM, LPIPS, codebook usage, bits and throughput (`hf-vitvq eval`, runnable
under `accelerate launch` on many processes). See `hf_vitvq.training.evaluate_tokenizer` for the protocol.

    python training/eval_tokenizer.py outputs/demo                       # the demo's held-out tiles, its final/
    accelerate launch --num_processes 8 training/eval_tokenizer.py titok-l32 \
        --dataset_name ILSVRC/imagenet-1k --split validation --batch_size 64   # TiTok's rFID protocol, 50k images

(Not named evaluate.py: that would shadow the `evaluate` package for scripts that put training/ on `sys.path`.)
"""

from hf_vitvq.training.evaluate_tokenizer import main

if __name__ == "__main__":
    main()
