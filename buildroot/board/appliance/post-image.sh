#!/bin/sh
# Post-image: the same layout as image/build writes: appliance.img, vmlinuz, initrd.img, pxe/.
set -eu
BOARD_DIR=$(dirname "$0")
GENIMAGE_TMP="${BUILD_DIR}/genimage.tmp"
rm -rf "$GENIMAGE_TMP"
genimage --rootpath "$TARGET_DIR" --tmppath "$GENIMAGE_TMP" --inputpath "$BINARIES_DIR" \
    --outputpath "$BINARIES_DIR" --config "$BOARD_DIR/genimage.cfg"
# bzImage carries the initramfs and the command line; PXE gets the same kernel plus the
# separate initramfs (harmless duplicate) and an iPXE script.
cp "$BINARIES_DIR/bzImage" "$BINARIES_DIR/vmlinuz"
cp "$BINARIES_DIR/rootfs.cpio.zst" "$BINARIES_DIR/initrd.img"
mkdir -p "$BINARIES_DIR/pxe"
cp "$BINARIES_DIR/vmlinuz" "$BINARIES_DIR/initrd.img" "$BINARIES_DIR/pxe/"
CMDLINE=$(sed -n 's/^CONFIG_CMDLINE="\(.*\)"$/\1/p' "$BOARD_DIR/linux.fragment")
cat > "$BINARIES_DIR/pxe/boot.ipxe" <<IPXE
#!ipxe
kernel vmlinuz initrd=initrd.img $CMDLINE
initrd initrd.img
boot
IPXE
echo "post-image: wrote $BINARIES_DIR/{appliance.img,vmlinuz,initrd.img,pxe/}"
