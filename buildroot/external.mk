include $(sort $(wildcard $(BR2_EXTERNAL_APPLIANCE_PATH)/package/*/*.mk))
