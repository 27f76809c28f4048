"""Meta keys a learner's results and a controller's requests carry (no torch/NVFlare import, cheap for job scripts)."""

#: meta key of a training result: training samples this round saw once (the FedAvg weight n_k)
TRAIN_SAMPLES_KEY = "NUM_TRAIN_SAMPLES"
#: meta key of a server request that is not a training round (a controller's extra phase, e.g. IOP-FL's export)
PHASE_KEY = "TASK_PHASE"
