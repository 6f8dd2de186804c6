"""Names, in one place: the models, datasets and mutation operators a profile may name (the profile
schema and the modules that build them read them from here), and the names a reader sees: one mapping
from the keys of the score columns, ``metrics.json`` and the tables to the names in figure legends,
labels and ticks (:mod:`helpers.plots`) and in the generated tables of ``report.md``, ``docs/`` and the
README (:mod:`helpers.tools.report`)."""
from __future__ import annotations

import re

#: the models :func:`helpers.models.build_model` builds (``model:`` in a profile)
MODEL_NAMES = ("small_cnn", "resnet20", "resnet20_keras", "inception_v3", "vgg16", "vgg16_gap", "squeezenet1_1")
#: ``model:`` may also name any torchvision classifier, ``torchvision.<builder>`` (a name of
#: ``torchvision.models.list_models()``), or a callable of your own that returns an ``nn.Module``,
#: ``<importable.module>:<callable>``; :func:`helpers.models.build_model` finds their layers
MODEL_FORMS = ("torchvision.<builder>", "<module>:<callable>")
TORCHVISION_PREFIX = "torchvision."
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_BUILDER = re.compile(rf"torchvision\.{_IDENT}")
_CALLABLE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*:{_IDENT}(?:\.{_IDENT})*")


def torchvision_weights(enum, weights):
    """The member of a torchvision weights enum that ``weights`` names (``DEFAULT``, ``IMAGENET1K_V1``, the
    full ``<Enum>.<name>``, or ``pretrained`` / ``imagenet`` for DEFAULT), or None when it names none (a
    file, null)."""
    if not isinstance(weights, str) or weights == "none":
        return None
    short = "DEFAULT" if weights in ("pretrained", "imagenet") else weights.removeprefix(enum.__name__ + ".")
    return enum[short] if short in enum.__members__ else None


def model_kind(name) -> str | None:
    """What ``model:`` names: ``"known"`` (one of :data:`MODEL_NAMES`, its layers declared in
    ``helpers.models.LAYERS``), ``"torchvision"`` (``torchvision.<builder>``), ``"callable"``
    (``<module>:<callable>``), or None (not a model name)."""
    if not isinstance(name, str):
        return None
    if name in MODEL_NAMES:
        return "known"
    if _BUILDER.fullmatch(name):
        return "torchvision"
    if _CALLABLE.fullmatch(name):
        return "callable"
    return None


#: the datasets :func:`helpers.datasets.load_data` reads (``dataset:`` in a profile)
DATASET_NAMES = ("digits", "cifar10", "imagenet_subset", "cub200", "imagefolder")
#: the mutation operators of :mod:`helpers.paper1.mutation` (``lcr.*operator*`` in a profile; paper 1, sec. 4.2)
MUTATION_OPERATORS = ("gf", "nai", "ws", "ns", "filter_nai", "filter_gf", "bn_nai")

# A key not listed is shown as it is (underscores as spaces).
DISPLAY_NAMES = {
    # paper 1
    "conductance": "conductance detector",
    "conductance_oof": "conductance detector (out of fold)",
    "conductance_cf": "conductance detector (cross-fitted, all photos)",
    "lcr": "LCR (label change rate)",
    "joint_nn": "joint NN (LCR + conductance)",
    "joint_rf": "joint random forest (LCR + conductance)",
    "joint_lda": "joint LDA (LCR + conductance)",
    "joint_qda": "joint QDA (LCR + conductance)",
    "joint_nn_msp": "joint NN + MSP",
    "joint_rf_msp": "joint random forest + MSP",
    "joint_lda_msp": "joint LDA + MSP",
    "joint_qda_msp": "joint QDA + MSP",
    # baselines (helpers.baselines.BASELINES)
    "msp": "max softmax prob. (MSP)",
    "entropy": "softmax entropy",
    "energy": "energy score",
    "max_logit": "max logit",
    "doctor_alpha": "DOCTOR (D_alpha)",
    # paper 2
    "cfe_recall": "CFE filters: 1 - recall",
    "cfe_f1": "CFE filters: 1 - F1",
    "cfe_precision": "CFE filters: 1 - precision",
    "cfe_outside": "CFE filters: MC filters outside G_c",
    "cfe_mask_size": "CFE filters: MC filters (mask size)",
    "joint_nn_msp_cfe": "joint NN (MSP + CFE precision + outside G_c)",
    "joint_nn_cfe": "joint NN (LCR + conductance + CFE recall)",
    "joint_nn_cfe_without_lcr": "joint NN (conductance + CFE recall)",
    # operating points (paper1.operating_points)
    "equal_recall": "equal recall",
    "high_correct_recall": "high correct recall (few correct inputs discarded)",
    "high_wrong_recall": "high wrong recall (few errors kept)",
    # debugging runs (notebook 05)
    "debugged": "debugged (filter loss)",
    "control": "control (l1 = l2 = 0)",
}


def display_name(key) -> str:
    """The reader's name of a score / operating point / run key (``joint_nn_msp`` -> "joint NN + MSP");
    an unknown identifier-like key with its underscores as spaces, any other label unchanged."""
    key = str(key)
    if key in DISPLAY_NAMES:
        return DISPLAY_NAMES[key]
    return key.replace("_", " ") if re.fullmatch(r"[a-z0-9_]+", key) else key
