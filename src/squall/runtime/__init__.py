"""Code that runs inside the sandbox: the zygote, the instances forked from it, the handler context.

Nothing here imports the rest of the platform (only ``squall.runtime.protocol``), so a zygote starts
fast and a function sees none of the platform's code paths.
"""
