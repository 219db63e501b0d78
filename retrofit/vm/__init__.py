"""The VM rehearsal lab: a box builder, and VMs to boot it in (plain QEMU or Vagrant).

- :mod:`retrofit.vm.image` builds a bootable Debian disk image (qcow2, cached by its
  inputs) and packages it as a vagrant-libvirt box.
- :mod:`retrofit.vm.machine` is the VM class tests and ``retrofit rehearse`` drive:
  ``cmd()``, ``reboot()``, ``status_json()``, ``copy_in()``.
- :mod:`retrofit.vm.qemu` and :mod:`retrofit.vm.vagrant_backend` are its backends.
"""
