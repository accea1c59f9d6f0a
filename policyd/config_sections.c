/*
 * policyd/config_sections.c - the table of module-owned config sections
 * (see config_section.h).  Adding a section touches this table only.
 */
#include "config_section.h"

#include <stddef.h>

#include "anomaly.h"
#include "dns.h"
#include "selfcheck.h"
#include "flag.h"
#include "ndr.h"

const struct config_section *const config_sections[] = {
    &anomaly_section,     &dns_section,        &selfcheck_section,
    &flag_config_section, &ndr_config_section, NULL,
};
