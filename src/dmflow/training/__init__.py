"""Training: K models stacked in one LightningModule (MLPs as batched matmuls, conv
nets and custom models stacked from single networks), trained by one ``Trainer.fit``,
and their float32 margins on the targets."""
