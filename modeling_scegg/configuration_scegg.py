"""Configuration of SC-EGG (Hong et al., "Semantic Compression Embedding for Generative Zero-Shot
Learning", IJCAI-22).

One object holds every size and hyperparameter of the model, and a switch for every place where the
authors' published code differs from the paper's equations (README, "Paper and published code"):
the published behaviour is the default, the paper's variant is one keyword away, so both can be
trained and compared.
"""
from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

_CHOICES = {
    "stage1_classes": ("seen", "all"),
    "runtime_compression": ("mean", "mlp"),
    "regression_loss": ("mse", "sum_l2"),
    "stage2_objective": ("regression", "cross_entropy"),
    "sce_source": ("reconstruction", "prior"),
    "decoder_loss": ("weighted_l1", "l1"),
    "classifier_input": ("augmented", "plain"),
    "dense_feature_source": ("scen", "pooled"),
}

_SIZES = ("feature_dim", "num_regions", "num_attributes", "word_dim", "num_classes", "regression_hidden_dim",
          "encoder_hidden_dim", "generator_hidden_dim", "critic_hidden_dim", "decoder_hidden_dim", "refit_num_synthetic")
# Upper bounds checked before anything is allocated: a config.json asking for 10^9 classes must be
# refused when it is loaded, not exhaust memory building their ids and names. Generous for real data
# (ImageNet-21k has 21841 classes; ResNet features have 2048 channels).
MAX_NUM_CLASSES = 100_000
MAX_WIDTH = 65_536


class SCEGGConfig(PretrainedConfig):
    r"""
    Configuration of [`SCEGGModel`]. `SCEGGConfig()` with no arguments describes CUB with the
    common ResNet-101 region features; for other data, read the sizes from the data.

    Sizes (read them from the data; nothing else in the package assumes them):
        feature_dim (`int`, defaults to 2048): channels D of a region feature (ResNet-101 conv5).
        num_regions (`int`, defaults to 196): regions R per image (a 14 x 14 map; 49 for 224 crops).
        num_attributes (`int`, defaults to 312): attributes A of the class semantic vectors.
        word_dim (`int`, defaults to 300): size dv of the attribute word vectors (GloVe).
        num_classes (`int`, defaults to 200): all classes C, seen and unseen.
        seen_class_ids (`list[int]`, defaults to the first 150 ids): classes with training images.
        unseen_class_ids (`list[int]`, defaults to the remaining ids): classes never seen in
            training; the CZSL head predicts among these, in this order.
        id2label (`dict[int, str]`): class names; defaults to `class_<i>`.
        attribute_names (`list[str]`, *optional*): the A attribute names, recorded from the data
            when it has them, so predictions can say which attributes they saw; None otherwise.

    SCEN (stage 1 and 2):
        sc_hidden_dim (`int`, defaults to `num_attributes // 2`): hidden width of the semantic
            compression MLP that runs along the attribute axis (Eq. 4).
        sc_negative_slope (`float`, defaults to 0.01): LeakyReLU slope in SC and the regression head.
        regression_hidden_dim (`int`, defaults to 1024): hidden width of the stage-2 global head.
        lambda_l (`float`, defaults to 1.0): weight of L_LCE (Eq. 6) in L_S1; 0 is "w/o L_LCE".
        lambda_g (`float`, defaults to 1.0): weight of L_GCE (Eq. 7) in L_S1 (Eq. 16); 0 is
            "w/o L_GCE".
        stage1_classes (`str`, defaults to `"seen"`): classes the stage-1 softmax runs over.
            `"seen"` is the published code; `"all"` is Eq. 6-7 of the paper.
        train_word_vectors (`bool`, defaults to `True`): whether the attribute queries V start from
            the word vectors and are learnt (published) or stay frozen.
        runtime_compression (`str`, defaults to `"mean"`): how g is computed after stage 1. The
            published code uses the mean of the local features over attributes; `"mlp"` uses the
            trained SC network as the paper describes.
        regression_loss (`str`, defaults to `"mse"`): L_SCR (Eq. 8) as the mean squared error
            (published) or the summed squared L2 distance per sample, averaged over the batch
            (`"sum_l2"`, paper).
        stage2_objective (`str`, defaults to `"regression"`): `"regression"` trains the stage-2
            head with L_SCR on the frozen local scores; `"cross_entropy"` trains it on the labels
            instead (the "w/o L_SCR" ablation).
        dense_feature_source (`str`, defaults to `"scen"`): `"scen"` uses the SCEN's dense feature
            g; `"pooled"` uses the mean-pooled backbone feature (the TF-VAEGAN baseline, no SCEN).
        attribute_encoder (`str`, *optional*): the sentence encoder (Hub id or folder) whose
            mean-pooled embeddings of the attribute names became the word vectors, for data that had
            none; None when the dataset's own word vectors were used.

    EGGN (stage 3, TF-VAEGAN):
        latent_dim (`int`, defaults to `num_attributes`): size of the VAE latent z.
        encoder_hidden_dim (`int`, defaults to 4096): hidden width of the encoder E.
        generator_hidden_dim (`int`, defaults to 4096): hidden width of the generator G; also the
            width of the feedback module's output, which is added to G's hidden layer.
        critic_hidden_dim (`int`, defaults to 4096): hidden width of the critic D.
        decoder_hidden_dim (`int`, defaults to 4096): hidden width of the attribute decoder Dec;
            also the feedback module's input and hidden width.
        eggn_negative_slope (`float`, defaults to 0.2): LeakyReLU slope in the EGGN.
        eggn_init_std (`float`, defaults to 0.02): std of the normal init of EGGN Linear weights.
        gamma_d (`float`, defaults to 10.0): weight of the critic's WGAN terms (lambda_w of the paper).
        gamma_g (`float`, defaults to 10.0): weight of the generator's adversarial term.
        gp_lambda (`float`, defaults to 10.0): initial gradient-penalty coefficient lambda of Eq. 11.
        adaptive_gp (`bool`, defaults to `True`): adapt lambda after every group of critic steps
            (published TF-VAEGAN); `False` keeps it fixed.
        gp_adapt_bounds (`tuple[float, float]`, defaults to (1.001, 1.05)): if the mean normalised
            penalty is above the upper bound lambda grows, below the lower bound it shrinks.
        gp_adapt_factor (`float`, defaults to 1.1): the factor of one adaptation.
        lambda_r (`float`, defaults to 0.01): weight of the attribute reconstruction L_Rec (Eq. 12).
        decoder_loss (`str`, defaults to `"weighted_l1"`): L_Rec as TF-VAEGAN's weighted L1
            (sum |d|^3 / ||d||_2 per sample) or the plain L1 norm of the paper.
        lambda_s (`float`, defaults to 0.1): weight of L_SCE (Eq. 14) in L_EGS (Eq. 13).
        lambda_u (`float`, defaults to 0.1): weight of L_UCE (Eq. 15) in L_EGS.
        sce_source (`str`, defaults to `"reconstruction"`): synthetic seen features for L_SCE are the
            VAE reconstructions (published) or samples from the prior (paper).
        egs_prior_feedback (`bool`, defaults to `False`): whether the fakes that L_EGS draws from the
            prior (the unseen fakes of Eq. 15, and the seen ones with `sce_source="prior"`) are
            corrected by the feedback module in the feedback loop. The published code generates
            them without feedback; `True` is the behaviour of scegg 0.1.
        feedback_weight (`float`, defaults to 1.0): a1, weight of the feedback in training passes.
        synthesis_feedback_weight (`float`, defaults to 1.0): a2, weight of the feedback when
            synthesising features for the final classifiers.
        freeze_decoder (`bool`, defaults to `False`): keep Dec fixed in the generator step
            (the published AWA2 setting).

    Final classifiers:
        classifier_input (`str`, defaults to `"augmented"`): the classifiers see
            [x, Dec(x), Dec_hidden(x)] (published TF-VAEGAN) or x alone (`"plain"`).
        seen_score_offset (`float`, defaults to 0.0): calibrated stacking (Chao et al., ECCV 2016):
            subtracted from every seen class's GZSL score before the argmax, to counter the bias
            towards seen classes. Training sets it with `--calibration validation` (chosen on the
            validation view, never on test); 0 is the uncalibrated classifier.
        refit_num_synthetic (`int`, defaults to 300): synthetic features per unseen class, also the
            batch size, when `add_classes` refits both classifiers (training records its `--syn_num`).
        refit_epochs (`list[int]`, defaults to `[25, 25]`): GZSL and CZSL epochs of that refit
            (training records the epochs its classifiers ran).
        refit_lr (`float`, defaults to 1e-3): Adam learning rate of that refit (`--classifier_lr`).

    Pictures in ([`SCEGGForImageClassification`]):
        backbone_config (`ResNetConfig` or `dict`, *optional*): the region backbone, in transformers'
            backbone conventions: a ResNet whose last stage (`out_features=["stage4"]`) gives an
            H x W map of `feature_dim` channels, read row-major as `num_regions` = H * W regions.
            None for a model that takes region features only (its checkpoint holds no backbone).
        feature_backbone (`str`, *optional*): the backbone weights that computed the region features
            the model was trained on, as `"sha256:<hex>"` over every weight and buffer (the same for
            a torchvision .pth, its safetensors conversion or a Hub copy); `scegg attach-backbone`
            refuses other weights. None when unknown (precomputed features, synthetic data).
        feature_backbone_name (`str`, *optional*): where those weights came from, as the user named
            them: a Hub id (e.g. `"timm/resnet101.tv_in1k"`, then also the model card's `base_model`)
            or a file name. None when unknown.
    """

    model_type = "scegg"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(AutoConfig, model_type="resnet", optional=True)}

    feature_dim: int = 2048
    num_regions: int = 196
    num_attributes: int = 312
    word_dim: int = 300
    num_classes: int = 200
    seen_class_ids: list[int] | None = None
    unseen_class_ids: list[int] | None = None
    attribute_names: list[str] | None = None

    sc_hidden_dim: int | None = None
    sc_negative_slope: float = 0.01
    regression_hidden_dim: int = 1024
    lambda_l: float = 1.0
    lambda_g: float = 1.0
    stage1_classes: str = "seen"
    train_word_vectors: bool = True
    runtime_compression: str = "mean"
    regression_loss: str = "mse"
    stage2_objective: str = "regression"
    dense_feature_source: str = "scen"
    attribute_encoder: str | None = None

    latent_dim: int | None = None
    encoder_hidden_dim: int = 4096
    generator_hidden_dim: int = 4096
    critic_hidden_dim: int = 4096
    decoder_hidden_dim: int = 4096
    eggn_negative_slope: float = 0.2
    eggn_init_std: float = 0.02
    gamma_d: float = 10.0
    gamma_g: float = 10.0
    gp_lambda: float = 10.0
    adaptive_gp: bool = True
    gp_adapt_bounds: tuple[float, float] | list[float] = (1.001, 1.05)
    gp_adapt_factor: float = 1.1
    lambda_r: float = 0.01
    decoder_loss: str = "weighted_l1"
    lambda_s: float = 0.1
    lambda_u: float = 0.1
    sce_source: str = "reconstruction"
    egs_prior_feedback: bool = False
    feedback_weight: float = 1.0
    synthesis_feedback_weight: float = 1.0
    freeze_decoder: bool = False

    classifier_input: str = "augmented"
    seen_score_offset: float = 0.0
    refit_num_synthetic: int = 300
    refit_epochs: list[int] | tuple[int, int] = (25, 25)
    refit_lr: float = 1e-3

    backbone_config: dict | PretrainedConfig | None = None
    feature_backbone: str | None = None
    feature_backbone_name: str | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self._check_size_bounds()
        if self.seen_class_ids is None and self.unseen_class_ids is None:
            num_seen = (3 * self.num_classes) // 4
            self.seen_class_ids = list(range(num_seen))
            self.unseen_class_ids = list(range(num_seen, self.num_classes))
        elif self.seen_class_ids is None or self.unseen_class_ids is None:
            given = "seen_class_ids" if self.unseen_class_ids is None else "unseen_class_ids"
            missing = "unseen_class_ids" if given == "seen_class_ids" else "seen_class_ids"
            raise ValueError(f"SCEGGConfig: {given} was given without {missing}; give both or neither")
        self.seen_class_ids = [int(c) for c in self.seen_class_ids]
        self.unseen_class_ids = [int(c) for c in self.unseen_class_ids]
        self.gp_adapt_bounds = [float(b) for b in self.gp_adapt_bounds]
        self.refit_epochs = [int(e) for e in self.refit_epochs]
        if self.id2label is None and "num_labels" not in kwargs:
            self.id2label = {i: f"class_{i}" for i in range(self.num_classes)}
        super().__post_init__(**kwargs)
        self.validate_scegg()

    @property
    def resolved_sc_hidden_dim(self) -> int:
        """Width of the SC MLP: the paper halves the attribute axis unless told otherwise."""
        return self.sc_hidden_dim or max(1, self.num_attributes // 2)

    @property
    def resolved_latent_dim(self) -> int:
        """TF-VAEGAN draws z with as many dimensions as there are attributes."""
        return self.latent_dim or self.num_attributes

    @property
    def classifier_input_dim(self) -> int:
        """Input width of the final classifiers, which depends on the `classifier_input` switch."""
        if self.classifier_input == "augmented":
            return self.feature_dim + self.num_attributes + self.decoder_hidden_dim
        return self.feature_dim

    def _check_size_bounds(self) -> None:
        """Refuse absurd sizes before any list, dict or weight is built from them."""
        for name in _SIZES:
            value, bound = getattr(self, name), MAX_NUM_CLASSES if name == "num_classes" else MAX_WIDTH
            if isinstance(value, int) and value > bound:
                raise ValueError(f"SCEGGConfig.{name} = {value} is above {bound}: config.json is corrupt or "
                                 f"not an SC-EGG model's (sizes are read from the data, which never has that many)")

    def validate_scegg(self) -> None:
        """Reject inconsistent settings early, naming the field, so a bad config never trains."""
        for name in _SIZES:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SCEGGConfig.{name} must be a positive integer, got {value!r}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"SCEGGConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        self._validate_class_split()
        if self.id2label is not None and len(self.id2label) != self.num_classes:
            raise ValueError(
                f"SCEGGConfig.id2label has {len(self.id2label)} names but num_classes is {self.num_classes}"
            )
        if self.attribute_names is not None and len(self.attribute_names) != self.num_attributes:
            raise ValueError(f"SCEGGConfig.attribute_names has {len(self.attribute_names)} names but num_attributes "
                             f"is {self.num_attributes}")
        if len(self.refit_epochs) != 2 or min(self.refit_epochs) < 1:
            raise ValueError(f"SCEGGConfig.refit_epochs must be [gzsl, czsl] epochs >= 1, got {self.refit_epochs}")
        lower, upper = self.gp_adapt_bounds
        if not 0 < lower <= upper:
            raise ValueError("SCEGGConfig.gp_adapt_bounds must be (lower, upper) with 0 < lower <= upper, "
                             f"got {self.gp_adapt_bounds}")

    def _validate_class_split(self) -> None:
        seen, unseen = self.seen_class_ids, self.unseen_class_ids
        for name, ids in (("seen_class_ids", seen), ("unseen_class_ids", unseen)):
            if not ids:
                raise ValueError(f"SCEGGConfig.{name} must name at least one class")
            if len(set(ids)) != len(ids):
                raise ValueError(f"SCEGGConfig.{name} contains duplicate class ids")
            bad = [c for c in ids if not 0 <= c < self.num_classes]
            if bad:
                raise ValueError(
                    f"SCEGGConfig.{name} has ids outside [0, num_classes={self.num_classes}): {bad[:5]}"
                )
        overlap = sorted(set(seen) & set(unseen))
        if overlap:
            raise ValueError(f"SCEGGConfig.unseen_class_ids {overlap[:5]} are also in seen_class_ids")

    @property
    def num_seen_classes(self) -> int:
        return len(self.seen_class_ids)

    @property
    def num_unseen_classes(self) -> int:
        return len(self.unseen_class_ids)


__all__ = ["SCEGGConfig"]
