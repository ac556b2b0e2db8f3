/*
 * mssp-bridge: tell the bridge that ServiceNow resolved, closed or canceled
 * one of its incidents.
 *
 * Business rule on the Incident [incident] table (see README.md):
 *   When: after, Update: checked, Order: 1000
 *   Condition:
 *     current.correlation_display == 'mssp-bridge' &&
 *     (current.state.changesTo(6) || current.state.changesTo(7) || current.state.changesTo(8))
 *
 * It sends one signed POST and never waits for, or depends on, the answer:
 * the bridge's reconcile poll closes the incident even when this call is lost.
 *
 *   POST <url>   Content-Type: application/json
 *   X-Bridge-Timestamp: <unix seconds>
 *   X-Bridge-Signature: v1=<base64 HMAC-SHA256(base64-decode(key), "<timestamp>.<body>")>
 *   {"sys_id":"…","number":"INC…","state":"7","correlation_id":"…","close_code":"…"}
 *
 * System properties read:
 *   x_mssp.bridge_callback_url   the bridge route; "{tenant}" in it is replaced by
 *                                the incident's tenant, e.g.
 *                                https://bridge.example/tenants/{tenant}/v1/servicenow/events
 *   x_mssp.bridge_tenant_tags    JSON object, customer tag -> tenant id, e.g.
 *                                {"3f2a9c01": "acme"}: the tag is the part of the
 *                                incident's correlation_id after "amp-"
 *                                (`mssp-bridge tenant show` prints it). Needed when
 *                                several tenants share one ServiceNow user (a shared
 *                                ServiceNow account); tried first.
 *   x_mssp.bridge_tenants        JSON object, API user name -> tenant id, e.g.
 *                                {"svc_bridge_acme": "acme"} (one user per tenant)
 *   x_mssp.bridge_callback_key.<tenant>   the tenant's callback_key (base64), or
 *   x_mssp.bridge_callback_key   the key when there is one bridge tenant
 *   x_mssp.bridge_close_states   states that are reported, default "6,7,8"
 *
 * Written in ES5 so that it runs in every scripting mode of the platform.
 */
(function executeRule(current, previous /* null in async rules */) {
    var SOURCE = 'mssp-bridge';
    var LOG_SOURCE = 'mssp-bridge callback';
    var PREFIX = 'x_mssp.bridge_';

    function text(record, field) {
        var v = record.getValue(field);
        return v === null || v === undefined ? '' : String(v);
    }

    function fail(why) {
        gs.error('mssp-bridge: ' + why + ' (incident ' + text(current, 'number') + '); ' +
            'no callback sent, the bridge will close it on its next reconcile poll', LOG_SOURCE);
    }

    // The condition already says so; checked again so that a rule copied
    // without its condition cannot call the bridge for other incidents.
    if (text(current, 'correlation_display') !== SOURCE) {
        return;
    }
    var state = text(current, 'state');
    var closeStates = String(gs.getProperty(PREFIX + 'close_states', '6,7,8')).split(',');
    var closing = false;
    for (var i = 0; i < closeStates.length; i++) {
        if (closeStates[i].replace(/^\s+|\s+$/g, '') === state) {
            closing = true;
        }
    }
    if (!closing || (previous && text(previous, 'state') === state)) {
        return;
    }

    var url = gs.getProperty(PREFIX + 'callback_url', '');
    if (!url) {
        fail('system property ' + PREFIX + 'callback_url is not set');
        return;
    }
    var tenant = '';
    if (url.indexOf('{tenant}') >= 0) {
        // By the incident itself first (its correlation_id names the customer's tag:
        // right even when every tenant shares one ServiceNow user), else by its
        // creating API user.
        var maps = {};
        var names = ['tenant_tags', 'tenants'];
        for (var n = 0; n < names.length; n++) {
            try {
                maps[names[n]] = JSON.parse(gs.getProperty(PREFIX + names[n], '{}')) || {};
            } catch (e) {
                fail('system property ' + PREFIX + names[n] + ' is not a JSON object: ' + e);
                return;
            }
        }
        var tag = /^amp-([0-9a-f]{8})-/.exec(text(current, 'correlation_id'));
        var creator = text(current, 'sys_created_by');
        if (tag && typeof maps.tenant_tags[tag[1]] === 'string') {
            tenant = maps.tenant_tags[tag[1]];
        } else if (typeof maps.tenants[creator] === 'string') {
            tenant = maps.tenants[creator];
        }
        if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(tenant)) {
            fail('no bridge tenant for customer tag "' + (tag ? tag[1] : '') + '" in ' +
                PREFIX + 'tenant_tags nor for API user "' + creator + '" in ' + PREFIX + 'tenants');
            return;
        }
        url = url.replace('{tenant}', tenant);
    }
    var key = (tenant && gs.getProperty(PREFIX + 'callback_key.' + tenant, '')) ||
        gs.getProperty(PREFIX + 'callback_key', '');
    if (!key) {
        fail('no callback key: set ' + PREFIX + 'callback_key' + (tenant ? '.' + tenant : ''));
        return;
    }

    var body = JSON.stringify({
        sys_id: text(current, 'sys_id'),
        number: text(current, 'number'),
        state: state,
        correlation_id: text(current, 'correlation_id'),
        close_code: text(current, 'close_code')
    });
    var timestamp = String(Math.floor(new Date().getTime() / 1000));

    try {
        var mac = new GlideCertificateEncryption().generateMac(key, 'HmacSHA256', timestamp + '.' + body);
        if (!mac) {
            fail('signing failed (is the callback key valid base64?)');
            return;
        }
        var request = new sn_ws.RESTMessageV2();
        request.setEndpoint(url);
        request.setHttpMethod('post');
        request.setRequestHeader('Content-Type', 'application/json');
        request.setRequestHeader('Accept', 'application/json');
        request.setRequestHeader('X-Bridge-Timestamp', timestamp);
        request.setRequestHeader('X-Bridge-Signature', 'v1=' + mac);
        request.setRequestBody(body);
        request.setHttpTimeout(10000);
        if (previous) {
            // After rule: hand the call to the platform's async queue so that the
            // analyst's save never waits for the bridge.
            request.executeAsync();
            return;
        }
        // Async rule: this already runs in the background; wait for the answer
        // only to log it.
        var response = request.execute();
        var status = response.getStatusCode();
        if (status < 200 || status > 299) {
            fail('bridge answered HTTP ' + status + ': ' + response.getErrorMessage() + ' ' +
                String(response.getBody()).substring(0, 300));
        }
    } catch (ex) {
        fail('calling the bridge failed: ' + ex);
    }
})(current, previous);
