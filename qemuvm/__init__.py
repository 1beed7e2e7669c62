"""qemuvm: run QEMU/KVM virtual machines from YAML profiles, without libvirt."""

__version__ = "0.1.0"
