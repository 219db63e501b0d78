"""Boot chain: initramfs support, GRUB entries, trial boot, kargs."""
