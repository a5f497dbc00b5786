"""Headless training of Algorithm 1 (ACAT, ICML 2023), on one CPU, one GPU or many (torchrun).

Run the scripts as modules from the repository root (docs/TRAINING.md)::

    python -m training.run_algorithm1 --config training/configs/lung_synth_cpu.json
    torchrun --nproc_per_node 4 -m training.train_baseline --config ... --seed 0

Scripts (each step of Algorithm 1, readable top to bottom): train_baseline, train_autoencoder,
make_saliency, train_acat, evaluate (the paper's tables), run_algorithm1 (all of them),
export_bundle, score_test_split, make_sample_head. What they share:

    config         defaults, config files, --set overrides, validation, HyperParams
    runtime        device, DDP process group, seeds and RNG states
    data           datalist or ACAT-Synth -> prepared, memory-mapped arrays; splits; saliency maps
    augment        flips and affine / intensity augmentation, seeded per sample and epoch
    lesion_insertion  small faint brain lesions drawn into training batches (baseline.insert_lesions)
    loop           Stage, the batch schedule and fit (the training loop)
    classifier     classification stages, prediction
    checkpointing  resume checkpoints and per-epoch logs
    cards          building models, model cards, the final model files
    tables         the paper's tables from predictions and saliency scores

Run layout (one folder per config, its ``out_dir``)::

    out_dir/config.json                       the resolved config (run_algorithm1)
    out_dir/synth/                            ACAT-Synth volumes (data.source == "synth")
    out_dir/cache/                            prepared model inputs (memory-mapped, training.data)
    out_dir/seed<seed>/<stage>/               one training stage (baseline, autoencoder, acat, smic, ...)
        checkpoint_last.pt, checkpoint_best.pt    resume state (training.checkpointing)
        model.safetensors + model.json            the final model for users (best on validation)
        log.csv, tensorboard/                     per-epoch logs
    out_dir/seed<seed>/saliency/<split>.npy   counterfactual saliency maps (make_saliency)
    out_dir/tables/                           evaluate's Markdown and CSV tables
"""
