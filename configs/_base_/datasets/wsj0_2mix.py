# WSJ0-2mix at 8 kHz, "min" version (<data_root> = .../2speakers/wav8k/min holding tr / cv / tt with mix, s1, s2),
# training on dynamic mixtures as the Mamba-TasNet recipe does: two WSJ0 si_tr_s speakers per item (folders
# <data_root>/speakers/tr/<speaker>/*.wav, e.g. links to si_tr_s resampled to 8 kHz), each speed-perturbed by
# 95 / 100 / 105 %, wsj0-2mix levels (0-5 dB apart), 20,000 new mixtures per epoch, batch 1. Deviation: items are
# fixed 4 s windows (DynamicMixDataset's segment) where the recipe trains on whole utterances.
# Validation: cv, whole mixtures, SI-SNR(i); test: tt, SI-SNR(i) and SDR(i).
data_root = 'data/wsj0-2mix/2speakers/wav8k/min'
train_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=False,  # DatasetEpochHook's epoch must reach the workers
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='separation_collate'),
    dataset=dict(type='DynamicMixFolder', data_root=data_root, speakers_dir='speakers/tr', num_mixtures=20000,
                 n_src=2, segment=4.0, sample_rate=8000, speed_perturb=(0.95, 1.0, 1.05)))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='separation_collate'),
    dataset=dict(type='Wsj0MixFolder', data_root=data_root, split='cv', segment=None, random_crop=False))
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='separation_collate'),
    dataset=dict(type='Wsj0MixFolder', data_root=data_root, split='tt', segment=None, random_crop=False))
val_evaluator = dict(type='SeparationMetric', sdr=False)
test_evaluator = dict(type='SeparationMetric', sdr=True)
