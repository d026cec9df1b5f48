"""frankenlab: what did RL change in this model, and where?"""
__version__ = "0.1.0"
