"""The task interface (``Task``, the ``TASKS`` registry) and the agreement/bootstrap helpers that every task package
(plugin.classification, plugin.detection, plugin.pointcloud) builds on."""
