"""Named sets of UCALReID parameters."""

__all__ = ["PRESETS", "preset_params"]


def _paper():
    from ucal.active import MPPSMerger, SNPSSplitter
    from ucal.cluster import SelfPacedDBSCAN

    return {
        # SpCL's clustering, k1 = 30 whatever the data (Sec. 4.2)
        "clusterer": SelfPacedDBSCAN(k1_rule="fixed"),
        # Sec. 3.2: SNPS then MPPS, each asking its medoid pairs once; no answer
        # carried into later epochs except through the exact-pair memory (Sec. 3.3)
        "refiner": MPPSMerger(
            clusterer=SNPSSplitter(k_max_rule="floor", cluster_inference=False),
            cluster_inference=False,
            confirm_size=None,
        ),
        "memory_inference": False,
        # SpCL's base exactly: Eq. 1 on member-mean centroids, average pooling
        "loss": "centroid",
        "pooling": "avg",
        "centroid_momentum": None,
        # the answers reach the network through the pseudo labels alone
        "pair_weight": 0.0,
        "query_pacing": "greedy",
        # no questions before training: no calibration, no held-out validation
        "calibrator": None,
        "validation_size": 0,
        "keep_best": False,
        # SpCL's schedule, which the paper follows (Sec. 4.2)
        "iters_per_epoch": 400,
        "epochs": 50,
        "warmup_epochs": 15,
        "lr_schedule": "step",
        "lr_step": 20,
        "lr_gamma": 0.1,
    }


def _default():
    return {}


def _neighbors():
    from ucal.reid._pseudo_labels import default_refiner

    return {
        # MPPS asks each image about its nearest neighbour in another cluster
        # (mostly "same" from a pretrained start), not about centroid pairs
        "refiner": default_refiner().set_params(selection="neighbors"),
        # and spends the budget as early as the questions allow, while the
        # start network's neighbours are still the ones worth asking about
        "query_pacing": "greedy",
    }


PRESETS = {"paper": _paper, "default": _default, "neighbors": _neighbors}


def preset_params(name):
    """The parameters of a named preset (fresh objects each call)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; the presets are {sorted(PRESETS)}.")
    return PRESETS[name]()
