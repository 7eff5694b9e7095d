################################################################################
#
# appliance
#
################################################################################

# Built from this checkout (the BR2_EXTERNAL tree lives in its buildroot/ folder).
APPLIANCE_VERSION = 0.1.0
APPLIANCE_SITE = $(BR2_EXTERNAL_APPLIANCE_PATH)/..
APPLIANCE_SITE_METHOD = local
APPLIANCE_LICENSE = MIT or Apache-2.0
# Cargo workspace: the binary crate is in appliance/.
APPLIANCE_SUBDIR = appliance
# Do not copy build outputs and images of the checkout into the build directory.
APPLIANCE_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude target --exclude .git --exclude output

# PID 1 of the initramfs is the appliance itself (argv[0] "/init" selects the init role).
define APPLIANCE_INSTALL_INIT_LINK
	ln -sf usr/bin/appliance $(TARGET_DIR)/init
endef
APPLIANCE_POST_INSTALL_TARGET_HOOKS += APPLIANCE_INSTALL_INIT_LINK

$(eval $(cargo-package))
