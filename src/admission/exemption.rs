//! Whether a review is exempt from every policy: a pure function of the configured
//! exemptions, the review and what mlguard knows of its namespace. Checked before any Rego
//! runs; an exempted review is admitted unchanged, and says which exemption fired.
//!
//! Nothing here admits because of an error: an object whose labels cannot be read matches no
//! object-label exemption, and a namespace mlguard does not know (no cluster state, or none
//! for it) matches no label selector, so such reviews go on to the policies.

use std::collections::BTreeMap;

use super::review::ParsedReview;
use crate::policy::exemptions::{Exemption, Exemptions, Reason};

/// The first exemption that applies to `review`, checked in this order: user,
/// ServiceAccount, group, namespace name, namespace labels, object labels.
/// `namespace_labels` is None when mlguard does not know the review's namespace.
pub fn check(
    exemptions: &Exemptions,
    review: &ParsedReview,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Option<Exemption> {
    let fired = |reason, matched: &str| {
        Some(Exemption {
            reason,
            matched: matched.to_string(),
        })
    };
    if let Some(user) = exemptions.users.iter().find(|u| **u == review.user) {
        return fired(Reason::User, user);
    }
    if let Some((_, sa)) = exemptions
        .service_account_users()
        .find(|(user, _)| *user == review.user)
    {
        return fired(Reason::ServiceAccount, sa);
    }
    if let Some(group) = exemptions.groups.iter().find(|g| review.groups.contains(g)) {
        return fired(Reason::Group, group);
    }
    if !review.namespace.is_empty() {
        if let Some(ns) = exemptions
            .namespaces
            .iter()
            .find(|n| **n == review.namespace)
        {
            return fired(Reason::Namespace, ns);
        }
        if let (Some(selector), Some(labels)) = (&exemptions.namespace_selector, namespace_labels) {
            if selector.matches(labels) {
                return fired(Reason::NamespaceLabel, &review.namespace);
            }
        }
    }
    if !exemptions.object_labels.is_empty() {
        let objects = review.object_labels().ok()?;
        // As the webhook's objectSelector: exempt only when every object the review carries
        // (the object, and on UPDATE the old object) has the label, so that adding the label
        // in an update is still reviewed.
        let label = exemptions.object_labels.iter().find(|(key, value)| {
            !objects.is_empty() && objects.iter().all(|labels| labels.get(*key) == Some(value))
        });
        if let Some((key, value)) = label {
            return fired(Reason::ObjectLabel, &format!("{key}={value}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value as Json};

    fn review(request: Json) -> ParsedReview {
        let mut base = json!({
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "ml", "name": "p", "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["team-a", "system:authenticated"]},
            "object": {"metadata": {"name": "p", "labels": {"app": "x"}}},
        });
        for (k, v) in request.as_object().unwrap() {
            base[k] = v.clone();
        }
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": base});
        super::super::parse(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    fn exemptions(config: Json) -> Exemptions {
        Exemptions::from_config(&json!({ "exemptions": config })).unwrap()
    }

    fn reason(
        e: &Exemptions,
        r: &ParsedReview,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Option<String> {
        check(e, r, labels).map(|x| x.to_string())
    }

    #[test]
    fn users_service_accounts_and_groups() {
        let e = exemptions(json!({
            "users": ["alice"], "groups": ["breakglass"],
            "service_accounts": ["kube-system/job-controller"],
        }));
        assert_eq!(
            reason(&e, &review(json!({})), None).as_deref(),
            Some("user alice")
        );
        let sa = review(
            json!({"userInfo": {"username": "system:serviceaccount:kube-system:job-controller"}}),
        );
        assert_eq!(
            reason(&e, &sa, None).as_deref(),
            Some("service_account kube-system/job-controller")
        );
        let other_sa =
            review(json!({"userInfo": {"username": "system:serviceaccount:ml:job-controller"}}));
        assert_eq!(reason(&e, &other_sa, None), None);
        let group = review(json!({"userInfo": {"username": "bob", "groups": ["breakglass"]}}));
        assert_eq!(
            reason(&e, &group, None).as_deref(),
            Some("group breakglass")
        );
        assert_eq!(reason(&Exemptions::default(), &group, None), None);
    }

    #[test]
    fn namespaces_by_name_and_by_label_only_when_known() {
        let e = exemptions(json!({
            "namespaces": ["kube-system"],
            "namespace_selector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]},
        }));
        let kube = review(json!({"namespace": "kube-system"}));
        assert_eq!(
            reason(&e, &kube, None).as_deref(),
            Some("namespace kube-system")
        );
        let ml = review(json!({}));
        // Unknown namespace: a NotIn selector would match empty labels; it must not exempt.
        assert_eq!(reason(&e, &ml, None), None);
        let dev = BTreeMap::from([("tier".to_string(), "dev".to_string())]);
        assert_eq!(
            reason(&e, &ml, Some(&dev)).as_deref(),
            Some("namespace_label ml")
        );
        let prod = BTreeMap::from([("tier".to_string(), "prod".to_string())]);
        assert_eq!(reason(&e, &ml, Some(&prod)), None);
    }

    #[test]
    fn object_labels_need_every_object_of_the_review_to_carry_them() {
        let e = exemptions(json!({"object_labels": {"mlguard.io/exempt": "true"}}));
        let labeled = json!({"metadata": {"labels": {"mlguard.io/exempt": "true"}}});
        let plain = json!({"metadata": {"labels": {"mlguard.io/exempt": "false"}}});
        let r = review(json!({"object": labeled}));
        assert_eq!(
            reason(&e, &r, None).as_deref(),
            Some("object_label mlguard.io/exempt=true")
        );
        let r = review(json!({"object": labeled, "oldObject": null}));
        assert!(reason(&e, &r, None).is_some());
        let r = review(json!({"operation": "UPDATE", "object": labeled, "oldObject": plain}));
        assert_eq!(
            reason(&e, &r, None),
            None,
            "labelling oneself out in an update"
        );
        assert_eq!(reason(&e, &review(json!({"object": plain})), None), None);
        assert_eq!(
            reason(&e, &review(json!({"object": {"metadata": {}}})), None),
            None
        );
        // Labels mlguard cannot read exempt nothing.
        let bad = review(json!({"object": {"metadata": {"labels": {"mlguard.io/exempt": true}}}}));
        assert_eq!(reason(&e, &bad, None), None);
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"namespace":"ml","operation":"CREATE","object":{"metadata":{"labels":{"mlguard.io/exempt":"true"}},"spec":{"x":1e400}}}}"#;
        let unreadable = super::super::parse(body).unwrap();
        assert_eq!(reason(&e, &unreadable, None), None);
        assert_eq!(reason(&e, &review(json!({"object": null})), None), None);
    }
}
