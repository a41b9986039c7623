"""Tokens for scripts, who am I, and user management for admins."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from annotation.api.common import (
    Choice,
    ErrorSerializer,
    InputSerializer,
    no_input,
    paginated,
    paginated_response,
    request_user,
)
from annotation.api.permissions import ADMINS, EVERYONE, PUBLIC, Roles
from annotation.errors import broker_errors
from annotation.roles import ROLES, roles_from_groups, user_roles
from annotation.services.login_throttle import login_lockout_error, login_success_reset
from annotation.services.tokens import token_revoke
from annotation.services.users import user_create, user_role_update


class LoginThrottle(AnonRateThrottle):
    """Password guessing through the token endpoint is limited per client address (on
    top of the per-account lockout of annotation/services/login_throttle.py).

    DRF's own throttle, kept: a rate per address over every account is not what the
    lockout (django-axes, failures per account and address) counts. The override only
    lets requests through while Redis is down, where DRF would answer 500.
    """

    scope = "login"

    def allow_request(self, request: Request, view: APIView) -> bool:
        try:
            return super().allow_request(request, view)
        except broker_errors():
            return True  # Redis is down: the password and the lockout still decide


class TokenObtainInputSerializer(InputSerializer, AuthTokenSerializer):
    """DRF's username and password check, strict about unknown keys like every body."""


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()
    username = serializers.CharField()
    roles = serializers.ListField(child=serializers.CharField())


class UserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    roles = serializers.SerializerMethodField()
    is_active = serializers.BooleanField()

    def get_roles(self, user: AbstractUser) -> list[str]:
        # From the prefetched groups (a page of users costs one query for all their groups).
        names = (g.name for g in user.groups.all())
        return sorted(roles_from_groups(names, is_superuser=user.is_superuser))


class TokenRevokedSerializer(serializers.Serializer):
    username = serializers.CharField()
    revoked = serializers.BooleanField(help_text="false when the user had no token")


class TokenObtainApi(APIView):
    """Exchange a username and password for the user's API token (created once).

    After repeated failures for one username from one address the pair is locked out
    for a while (429 saying when to retry; annotation/services/login_throttle.py).
    django-axes counts the failures and refuses the pair while authenticating; it flags
    DRF's request, which its middleware does not see, so the refusal is answered here.
    """

    permission_classes = [Roles(POST=PUBLIC)]
    throttle_classes = [LoginThrottle]
    authentication_classes: list[type] = []  # a login form needs no CSRF token

    @extend_schema(request=TokenObtainInputSerializer, responses={200: TokenSerializer}, auth=[])
    def post(self, request: Request) -> Response:
        data = TokenObtainInputSerializer(data=request.data, context={"request": request})
        if not data.is_valid():
            if getattr(request, "axes_locked_out", False):
                raise login_lockout_error(request)
            raise serializers.ValidationError(data.errors)
        user = data.validated_data["user"]
        login_success_reset(request=request, username=data.validated_data["username"])
        token, _ = Token.objects.get_or_create(user=user)
        return Response(
            {"token": token.key, "username": user.username, "roles": sorted(user_roles(user))}
        )


class TokenRevokeOwnApi(APIView):
    """Revoke the caller's own API token: requests with it get 401 from now on. A new one
    comes from POST /api/auth/token/ (or an admin's `manage.py issue_token`)."""

    permission_classes = [Roles(POST=EVERYONE)]

    @extend_schema(request=None, responses=TokenRevokedSerializer)
    def post(self, request: Request) -> Response:
        no_input(request)
        user = request_user(request)
        revoked = token_revoke(user_id=user.pk, actor=user)
        return Response({"username": user.get_username(), "revoked": revoked})


class UserTokenRevokeApi(APIView):
    """Admins revoke any user's API token (a leaked key, someone leaving)."""

    permission_classes = [Roles(POST=ADMINS)]

    @extend_schema(request=None, responses=TokenRevokedSerializer)
    def post(self, request: Request, user_id: int) -> Response:
        no_input(request)
        revoked = token_revoke(user_id=user_id, actor=request_user(request))
        username = get_user_model().objects.get(pk=user_id).get_username()
        return Response({"username": username, "revoked": revoked})


class MeApi(APIView):
    permission_classes = [Roles(GET=EVERYONE)]

    @extend_schema(responses=UserSerializer)
    def get(self, request: Request) -> Response:
        return Response(UserSerializer(request.user).data)


def _users() -> QuerySet[AbstractUser]:
    return get_user_model().objects.prefetch_related("groups").order_by("id")  # type: ignore[return-value]


class UserListCreateApi(APIView):
    """Admins list users and create one in a role (409 if the username exists: a role
    changes only through PATCH /api/users/{id}/)."""

    permission_classes = [Roles(GET=ADMINS, POST=ADMINS)]

    class UserCreateInputSerializer(InputSerializer):
        username = serializers.RegexField(r"^[\w.@+-]+\Z", max_length=150)
        password = serializers.CharField(min_length=12, max_length=128, write_only=True)
        role = Choice(choices=ROLES)

    @extend_schema(operation_id="users_list", responses=paginated(UserSerializer))
    def get(self, request: Request) -> Response:
        return paginated_response(
            request=request, view=self, queryset=_users(), serializer_class=UserSerializer
        )

    @extend_schema(
        request=UserCreateInputSerializer,
        responses={201: UserSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        data = self.UserCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = user_create(actor=request_user(request), **data.validated_data)
        return Response(UserSerializer(user).data, status=status.HTTP_201_CREATED)


class UserDetailApi(APIView):
    """Admins change a user's role, the one way a role changes through the API (409 for
    the last admin's own admin role)."""

    permission_classes = [Roles(PATCH=ADMINS)]

    class UserUpdateInputSerializer(InputSerializer):
        role = Choice(choices=ROLES)

    @extend_schema(
        request=UserUpdateInputSerializer,
        responses={200: UserSerializer, 409: ErrorSerializer},
    )
    def patch(self, request: Request, user_id: int) -> Response:
        data = self.UserUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = user_role_update(
            user_id=user_id, role=data.validated_data["role"], actor=request_user(request)
        )
        return Response(UserSerializer(_users().get(pk=user.pk)).data)
