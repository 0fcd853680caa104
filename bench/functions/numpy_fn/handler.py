# heavy imports happen once, in the zygote; each instance is a fork that already has them
import numpy as np
import scipy.linalg
import scipy.stats


def handler(event, context):
    a = np.arange(4.0).reshape(2, 2) + np.eye(2)
    return {"det": float(scipy.linalg.det(a)), "norm_cdf0": float(scipy.stats.norm.cdf(0.0))}
