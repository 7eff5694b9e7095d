#!/bin/sh
# Post-build: the initramfs runs the appliance as PID 1 and ships nothing else that listens.
set -eu
TARGET_DIR=$1
ln -sf usr/bin/appliance "$TARGET_DIR/init"
mkdir -p "$TARGET_DIR/dev" "$TARGET_DIR/proc" "$TARGET_DIR/sys" "$TARGET_DIR/run" "$TARGET_DIR/tmp"
# Buildroot's skeleton may bring an inittab or rc scripts: unused without a shell.
rm -rf "$TARGET_DIR/etc/init.d" "$TARGET_DIR/etc/inittab"
