"""Embedded default: scikit-learn 8x8 digits (no download), all three stages in minutes on
2 CPU cores. ``metanas run`` uses this file when no ``--config`` is given.

NAS tasks: 5-class tasks of 64 train / 16 val images drawn from digits 0-4 (training split);
target task, a new one: digits 5-9, train split (minus a stratified validation part) / test
split. Source and target share no class and no image (checked at run time).
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "default"
    c.seed = 0

    c.space = ml_collections.ConfigDict()
    c.space.name = "macro32"
    c.space.layers = 3
    c.space.ops = ("conv3x3", "sep_conv3x3", "max_pool3x3", "identity")
    c.space.widths = (8, 16)
    c.space.stem_width = 8
    c.space.stem_kernel = 3           # 2: a stem that train.whiten_stem can make a patch-whitening layer
    c.space.reduction = "stride"      # how a downsampling layer halves: "stride" (stride-2 op) or "pool" (op, then 2x2 max-pool)
    c.space.stem_norm = True          # stem conv -> BN -> act; False: conv with bias -> act (airbench)
    c.space.activation = "relu"       # of every convolution: "relu" or "gelu"
    c.space.head_pool = "mean"        # global pooling before the classifier: "mean" or "max"
    c.space.head_scale = 1.0          # the logits are multiplied by it (airbench: 1/9)
    c.space.pool_before_norm = False  # "pool" spaces: conv -> 2x2 max-pool -> BN -> act (airbench's order)

    c.data = ml_collections.ConfigDict()
    c.data.source = "digits"          # data.load spec of the meta-training source
    c.data.source_split = "train"     # split of the source that NAS tasks are drawn from
    # The target must be a *new* task: the same dataset as source and target only with
    # disjoint classes (checked, as is every source image against the target's splits).
    c.data.source_classes = "0-4"     # class indices / ranges / names; "" = all
    c.data.target = "digits"          # data.load spec of the new task
    c.data.target_classes = "5-9"
    c.data.image_size = 8
    c.data.n_classes = 5              # classes per NAS task (= the target's: same program)
    c.data.n_train = 64               # train images per NAS task
    c.data.n_val = 16                 # validation images per NAS task
    c.data.num_tasks = 6              # NAS tasks for meta-learning
    c.data.val_fraction = 0.15        # of the target's training split, for search
    c.data.target_train = 200         # target images used by search candidates (0: all)
    c.data.target_val = 100           # target validation images for search (0: all)

    c.meta = ml_collections.ConfigDict()
    c.meta.method = "evaluator"       # "evaluator": NAS experience + evaluator + strategy ES; or "metanas"
    c.meta.archs_per_task = 6         # architectures trained per NAS task (experience)
    c.meta.tasks_per_checkpoint = 3   # experience is checkpointed after this many tasks
    c.meta.evaluator_steps = 50
    c.meta.batch_tasks = 4
    c.meta.hidden = (64, 64)
    c.meta.evaluator_lr = 1e-3        # the evaluator's meta-training rate (and in cross-validation)
    c.meta.evaluator_support = 16     # observed archs per task in its meta-training (<= half the task's)
    c.meta.task_images = 64           # images of a task the evaluator's task encoder reads
    c.meta.cv_folds = 5               # k-fold meta-evaluation over the NAS tasks (0 = off)
    c.meta.cv_top_k = 1               # top-k regret in that evaluation
    c.meta.es_iterations = 1
    c.meta.es_population = 2
    # meta.method = "metanas": meta-weights + meta-architecture of the space's supernet,
    # learned across the NAS tasks (search method "metanas": adapt, project, neighbours)
    c.meta.metanas = ml_collections.ConfigDict(dict(
        algorithm="fomaml",           # "maml" | "fomaml" | "reptile"
        steps=60, meta_batch=4, checkpoint_every=20,
        inner_steps=2, inner_lr=0.1, arch_inner_lr=0.3,
        meta_lr=1e-3, arch_meta_lr=3e-2,
        adapt_steps=5,                # inner steps on the target before projecting
        explore=0.25,                 # std of the encoding perturbations around the centre
        arch_init_scale=0.05))        # spread of the initial meta-architecture around the
                                      # space's encoding centre (macro32: 0.5, no choice preferred)

    # how a candidate architecture is trained to score it, in NAS experience and in search
    c.candidate = ml_collections.ConfigDict()
    c.candidate.steps = 8             # full-batch Adam steps per candidate
    c.candidate.lr = 3e-3
    c.candidate.chunk = 8             # (task, arch) pairs / candidates per compiled call

    c.search = ml_collections.ConfigDict()
    c.search.methods = ("meta", "random", "evolution")  # first one gives the final architecture
    c.search.budget = 12
    c.search.batch_size = 4
    c.search.n_random = 64            # strategy candidate pool
    c.search.n_starts = 8
    c.search.scratch_fit_steps = 100  # "scratch": evaluator fitting steps on each round's observations
    c.search.pick = "score"           # what a method hands over: "score" = its best validation score,
                                      # "model" = its own recommendation (search.recommend: for
                                      # "meta"/"scratch" the evaluated architecture the adapted
                                      # evaluator predicts best; a noisy proxy's argmax is often luck)
    c.search.finalists = 1            # > 1: each method's k best-scored candidates are trained with
                                      # the final-training recipe (train.*) and the one with the best
                                      # validation accuracy is handed over (the short proxy favours
                                      # fast learners); k trainings per method on top of the budget
    c.search.finalist_epochs = 0      # finalists' training epochs (0: train.epochs)
    c.search.finalist_images = 0      # finalists' training images (0: the whole train split, else
                                      # a stratified subsample)

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 10
    c.train.batch_size = 64
    c.train.lr = 0.05
    c.train.momentum = 0.9
    c.train.nesterov = True
    c.train.weight_decay = 5e-4
    c.train.label_smoothing = 0.1
    c.train.warmup_epochs = 1
    c.train.crop_pad = 1
    c.train.crop_mode = "zeros"       # the crop's padding: "zeros" (black) or "reflect" (airbench)
    c.train.flip = False              # digits are not mirror-symmetric
    c.train.bf16 = "auto"             # "auto": bf16 compute on GPU/TPU, float32 on CPU; or "on"/"off"
    c.train.eval_batch_size = 500
    # the fast recipe's options (metanas_jax.train.RECIPES["fast"] sets all of them)
    c.train.schedule = "cosine"       # or "triangle" (0.2 lr -> lr over warmup_epochs -> 0)
    c.train.ema = 0.0                 # moving average of the weights, evaluated and exported
    c.train.alternate_flip = False    # mirror each image every other epoch instead of at random
    c.train.tta = "none"              # test-time augmentation: "none", "flip", "flip_shift"
    c.train.whiten_stem = False       # frozen patch-whitening stem (needs space.stem_kernel = 2)
    c.train.dirac_init = False        # convolutions start as identities (airbench's implicit residual)
    c.train.kernel_init_scale = 1.0   # initial kernels times this (1/sqrt(3) = PyTorch's default scale)
    c.train.conv_impl = "auto"        # "auto" (matmul on CPU, xla elsewhere), "xla", "matmul",
                                      # "matmul_bf16" (bf16 matmul operands, float32 elsewhere)
    c.train.freeze_norm_scale = False # batch-norm scales stay one (airbench)
    c.train.norm_bias_lr_scale = 1.0  # batch-norm biases step lr x this (airbench: 64)
    c.train.head_lr_scale = 1.0       # the classifier steps lr x this

    c.runtime = ml_collections.ConfigDict()  # never affects results
    c.runtime.progress = True
    c.runtime.checkpoint_every_epochs = 1
    c.runtime.tensorboard = "auto"      # TensorBoard scalars when tensorboardX is installed; "on"/"off"
    # persistent XLA cache of the programs that compile in >= 1 s (the environment's
    # JAX_COMPILATION_CACHE_DIR / JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS win); "" = off
    c.runtime.compile_cache = "~/.cache/metanas_jax/xla"
    # Devices every stage uses: "auto" = all (every process's, in a multi-process run), or a
    # number; 1 = the single-device code paths. NAS-experience pairs and each search round's
    # candidates are split over them (the same scores as one device); final training is
    # data-parallel (train.batch_size must divide by the count; results equal one device's
    # up to float summation order). Several processes: `metanas run --coordinator HOST:PORT
    # --num-processes N --process-id I` on each (or METANAS_COORDINATOR,
    # METANAS_NUM_PROCESSES, METANAS_PROCESS_ID), one shared --workdir.
    c.runtime.mesh = "auto"

    c.report = ml_collections.ConfigDict()
    c.report.enabled = True
    return c
