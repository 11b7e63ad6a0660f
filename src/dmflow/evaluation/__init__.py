"""How good the datamodels are: held-out LDS and Pearson against one seed and the
seed mean, noise ceilings, the learning curve and counterfactual retraining."""
