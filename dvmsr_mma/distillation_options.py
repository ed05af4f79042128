"""What the pre-flight checks and ``DistillationModel`` both say about distillation options.

A leaf module: ``checks`` names a missing teacher before anything is built, the model when it is built directly,
with the same words, and neither imports the other.
"""

NO_TEACHER = ('path.pretrain_network_t is not set: DistillationModel needs the trained teacher weights, '
              'e.g. experiments/<teacher run>/models/net_g_latest.pth')
