"""helpers: the small library behind the notebooks of this paper companion.

The map, one line per module (imports run one way: ``tools`` -> ``paper2`` -> ``paper1`` -> the root;
the root imports no wing, and ``paper1`` never imports ``paper2``; ``tests/test_layering.py`` checks it).

The root: what both papers share
    profiles      a profile's settings: schema, defaults, validation, overrides (params/<name>.yaml)
    paths         where things live: the repository's folders, the cache and output roots
    names         the models, datasets and mutation operators a profile may name; display names of scores
    experiment    one profile's run: settings, device, data, model, predictions, outputs (figures, tables, metrics)
    cache         the stage cache: stages with sidecars and sha256, cost records, set-aside, stage log, formats, memo
    checkpoints   reading a checkpoint with its integrity checks, writing one with its provenance
    devices       the small GPU helpers: device choice (cuda, cpu, sim), kernel settings, driver check, threads
    simdevice     the simulated accelerator that runs the notebooks as a GPU would, to catch host syncs
    datasets      the splits (manifest of sample ids) of every supported dataset, image decoding
    models        the models under test, their conductance layer and pooled linear head
    training      training and fine-tuning loops, the per-sample prediction table
    evaluation    split order and inputs, the join on sample id, the baseline table, one evaluation of every score
    baselines     one-pass error scores a reviewer asks for: MSP, entropy, energy, max logit, DOCTOR
    metrics       AUROC with bootstrap intervals, operating points, detection reports
    plots         every figure of the notebooks
    progress      progress of the long stages: tqdm bars by hand, the batch runner's terminal in a batch run
    notebook      the notebooks' parameter check, stepping aside where a method cannot apply, kernel configuration
    utils         seeds, atomic writes, JSON and progress-bar conventions

paper1/: Leveraging Model Interpretability and Stability to increase Model Robustness (arXiv 1910.00387)
    conductance   feature-map conductance (sec. 3, eq. 5), exact and Riemann, checked against Captum
    detectors     the conductance error detector (sec. 4.1.2)
    mutation      model mutation operators (sec. 4.2)
    lcr           label change rate, mutant screening, SPRT early stopping (sec. 4.2)
    joint         the joint classifier of LCR and conductance, out-of-fold scores, expert relay (sec. 4.3)
    stages        paper 1's cached stages on an experiment, with the SPRT evaluation

paper2/: Leveraging counterfactual concepts for debugging and improving CNN model performance
    cfe           CFE generators, MC filters, global class filters G_c, Table 1's rules (sec. 3, 4.2)
    debugging     fine-tuning with the debugging loss, paired statistics (sec. 4.3, 4.4)
    stages        paper 2's cached stages on an experiment

tools/: command-line tools around the science
    run_notebooks   papermill batch runner (``make figures``)
    precompute      fills the stage cache on many processes (torchrun) from a queue; the LCR units' simulated schedule
    regression      headline numbers against the committed references, each with its tolerance
    report          report.md, the README's and docs' generated tables, the docs' number checks
    html_site       the static site of every profile's executed notebooks (``make html``)
    kernel_matrix   a profile from an empty cache under every CPU instruction set and thread count
    seed_spread     the training seed's share of every AUROC: paper 1's detectors over several training seeds
    gpu_check       ``make gpu-check``: environment, gpu tests, a profile, benchmarks, each in its budget
    testhooks       the environment switches that tests use to inject faults, in one place
"""
__version__ = "0.1.0"
