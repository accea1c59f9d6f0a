/*
 * policyd/modules.c - the table of daemon modules (see module.h), in start
 * order.
 */
#include "module.h"

#include <stddef.h>

#include "anomaly.h"
#include "control.h"
#include "dns.h"
#include "selfcheck.h"
#include "flag.h"
#include "held.h"
#include "metrics.h"
#include "ndr.h"

const struct module *const modules[] = {
    &metrics_module,   &dns_module,  &anomaly_module,
    &selfcheck_module, &held_module, &flag_module,
    &control_module,   &ndr_module,  NULL,
};
