"""The starter study file written by ``hpsearch init``."""

TEMPLATE = """\
# hpsearch study file. Every key is documented in the README ("Study file reference");
# an unknown key is an error. Run it with:  hpsearch run <this file>
version: 1
name: NAME                # the study's name in the storage; a second run resumes it
strategy: tpe             # grid | random | tpe
task: classification      # classification | regression (a numeric target)
metric: val_accuracy      # classification: val_accuracy | val_f1_macro | val_auc (2 classes) | val_loss
                          # regression: val_mse | val_mae | val_r2 | val_loss; the direction follows
n_trials: 30              # total budget (grid: omit it, the grid size is the budget)
seed: 0                   # same seed, same folds, same trial seeds

space:                    # tunable: lr dropout batch_size momentum weight_decay optimizer
  lr:         {type: float, low: 1.0e-4, high: 0.3, log: true}   # activation hidden_size n_layers
  dropout:    {type: float, low: 0.0, high: 0.5}
  batch_size: {type: categorical, choices: [32, 64, 128, 256]}
  # for strategy grid give values lists instead, e.g.  lr: {type: float, values: [0.001, 0.01, 0.1]}

data:
  source: digits          # digits | diabetes | synthetic | npz | csv | parquet | idx (MNIST IDX directory) | python
  # path: data/train.csv  # for file sources
  # target: label         # label column of csv/parquet (any discrete labels: integers, strings)
  # factory: mypkg.data:load      # source python: load() returns (X, y), (X, y, groups) or a torch Dataset
  test_fraction: 0.2      # stratified held-out test split, scored once at the end
  # shape: [1, 8, 8]      # one sample's shape (channels first): rows become images for your model
  # scaling: auto         # auto | per_feature | global | per_channel | none (auto: per_feature, images global)

model:
  hidden: [200, 200]      # MLP hidden layers; dropout follows each activation
  activation: relu        # relu | leaky_relu
  # factory: mypkg.models:build   # your own nn.Module: build(params, input_shape, n_outputs)

training:
  optimizer: sgd          # sgd | adam
  momentum: 0.9
  weight_decay: 0.0
  max_epochs: 50
  patience: 5             # early stopping on `monitor`, best weights restored
  monitor: val_loss       # any metric of the task
  # loss: mse             # regression: mse | l1 | huber (classification: cross-entropy)
  lr_schedule: none       # none | step | plateau

cv:
  folds: 5                # stratified k-fold (regression: plain k-fold); 1 = one holdout split
  # groups: patient       # grouped k-fold: a column (csv/parquet) or array (npz, python) of group ids

pruner:
  type: median            # none | median | successive_halving | hyperband

resources:
  cpus_per_trial: 1
  gpus_per_trial: 0       # fractions pack trials on one GPU, e.g. 0.25
  # max_concurrent: 4     # default: as many as the Ray cluster fits
  # stack_trials: 4       # train up to 4 trials (same batch size) as one network: small models, GPUs

refit:                    # the best trial, retrained on every non-test row, scored once on the test split
  epochs: cv_median       # cv_median: the median of its folds' best epochs, no inner split | early_stopping
"""
