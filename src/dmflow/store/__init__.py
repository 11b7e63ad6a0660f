"""The subset masks and the store: every on-disk format of dmflow's numbers and its light reader
(``formats``), the checks every chunk must pass (``schema``). Writing the files is the stages'."""
